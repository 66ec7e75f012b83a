"""The ``krea-batch`` command line: parses arguments, configures logging, calls one function."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from runner import __version__
from runner.catalog import load_catalog
from runner.emulator import serve_forever
from runner.emulator.config import FLAGS as EMULATOR_FLAGS
from runner.emulator.config import config_from_flags
from runner.errors import RunnerError, UsageError
from runner.manifest import load_manifest
from runner.plan import make_plan
from runner.secrets import read_token_file
from runner.views import catalog_table, model_detail, plan_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="krea-batch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"krea-batch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = commands.add_parser("plan", help="validate a manifest and show what it would run")
    plan.add_argument("manifest")
    plan.add_argument("--show", type=int, default=0, metavar="N", help="print the first N specs")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--max-jobs", type=int, metavar="N", help="cap on the expanded job count")

    serve = commands.add_parser("serve", help="run the Krea API emulator")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787)
    serve.add_argument("--token-file", help="accept only the token in this file")
    for flag, name, parse, text in EMULATOR_FLAGS:
        serve.add_argument(flag, dest=name, type=parse, help=text)

    models = commands.add_parser("models", help="list the models, or one model's parameters")
    models.add_argument("name", nargs="?")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _plan(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest, overrides={"max_jobs": args.max_jobs})
    plan = make_plan(manifest, show=max(args.show, 0))
    print(
        json.dumps(plan.to_json(), ensure_ascii=False, indent=1) if args.json else plan_text(plan)
    )
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.name:
        model = catalog.resolve(args.name)
        if args.json:
            print(
                json.dumps(
                    {
                        "id": model.id,
                        "endpoint": model.endpoint,
                        "aliases": list(model.aliases),
                        "schema": model.schema,
                    },
                    indent=1,
                )
            )
        else:
            print(model_detail(model))
    elif args.json:
        print(
            json.dumps(
                [{"id": m.id, "endpoint": m.endpoint, "aliases": list(m.aliases)} for m in catalog],
                indent=1,
            )
        )
    else:
        print(catalog_table(catalog))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    token = read_token_file(args.token_file) if args.token_file else None
    values = {name: getattr(args, name) for _, name, _, _ in EMULATOR_FLAGS}
    try:
        config = config_from_flags(values, token=token)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    asyncio.run(serve_forever(config, args.host, args.port))
    return EXIT_OK


COMMANDS = {"plan": _plan, "models": _models, "serve": _serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"krea-batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunnerError as exc:
        print(f"krea-batch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
