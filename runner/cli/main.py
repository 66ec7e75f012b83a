"""The ``krea-batch`` command line: parses arguments, configures logging, calls one function."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from PIL import UnidentifiedImageError

from runner.api.secrets import find_keys, read_tokens_file, token_source
from runner.api.webhooks import WebhookSettings
from runner.batch import run_batch
from runner.catalog import load_catalog
from runner.cli.closing import say_closing
from runner.cli.logs import configure_logging, json_line
from runner.cli.parser import build_parser, json_logs, refuse_secret_flags
from runner.cli.planning import plan_command
from runner.cli.progress import Progress
from runner.cli.status import readable, status_command
from runner.cli.verify import verify_command
from runner.cli.views import catalog_table, model_detail
from runner.coordination import COORDINATOR_VARIABLE
from runner.emulator.config import FLAGS as EMULATOR_FLAGS
from runner.emulator.config import config_from_flags
from runner.engine import EngineOptions, RunResult
from runner.engine.options import ALL_KEYS
from runner.errors import RunnerError, UsageError
from runner.exitcodes import ExitCode
from runner.manifest import load_manifest
from runner.money import dollars, parse_budget
from runner.outputs import Layout, arrow, iter_latest_records
from runner.outputs.destination import is_url
from runner.outputs.identity import recorded_shard
from runner.outputs.merge import IncompleteMerge, merge
from runner.outputs.provenance import read as read_provenance
from runner.outputs.report import write_report
from runner.outputs.summary import read_summary
from runner.outputs.trees import Tree
from runner.settings import (
    SETTING_NAMES,
    parse_deadline,
    parse_duration,
)
from runner.sharding import parse_shard

EMULATOR_TOKEN = "emulator"  # what --emulator sends as its token


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
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in SETTING_NAMES}
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit takes a whole number of at least 1")
    manifest = load_manifest(args.manifest, overrides=overrides)
    if manifest.settings.format == "parquet":
        arrow.parquet()
    for warning in manifest.warnings:
        logging.getLogger("runner").warning(warning)
    tokens, exclusive = ([], frozenset[str]()) if args.emulator else find_keys(args.token_file)
    webhook = None
    if args.webhook_url or args.webhook_listen:
        if not (args.webhook_url and args.webhook_listen):
            raise UsageError("--webhook-url and --webhook-listen go together")
        webhook = WebhookSettings.parse(args.webhook_url, args.webhook_listen)
    options = _options(args, exclusive)
    live = sys.stderr.isatty() and args.log_format == "text"  # JSON: every line an object
    progress = Progress(live=live, interval=args.progress_interval)
    if live:
        configure_logging(args.verbose, args.log_format, console=progress.console)
    batch = functools.partial(
        run_batch,
        manifest,
        args.out,
        options=options,
        on_progress=progress,
        notify_url=args.notify_url,
        metrics_file=args.metrics_file,
        webhook=webhook,
        state_dir=args.state_dir,
        append=args.append,
        coordinator=args.coordinator or os.environ.get(COORDINATOR_VARIABLE) or None,
    )
    try:
        if args.emulator:
            result = asyncio.run(_on_the_emulator(batch))
        else:
            source = token_source(args.token_file)
            result = asyncio.run(batch(api_base=args.api_base, tokens=tokens, key_source=source))
    finally:
        progress.close()
    out = str(args.out).rstrip("/")
    budget_text = None
    if options.budget is not None:
        unit = options.budget_unit
        budget_text = dollars(options.budget) if unit == "usd" else f"{options.budget:g} CU"
    say_closing(result, out, manifest.settings.format != "files", args.log_format, budget_text)
    return result.exit_code


def _options(args: argparse.Namespace, exclusive: frozenset[str]) -> EngineOptions:
    """The engine's options from ``run``'s flags (``exclusive``: the fingerprints of the keys
    the key file declares exclusive)."""
    budget, budget_unit = parse_budget(args.budget) if args.budget else (None, "usd")
    shard = None
    if args.shard:  # auto: the count the folder records, where the scheduler cannot say it
        shard = parse_shard(
            args.shard, os.environ, lambda: recorded_shard(args.out, args.state_dir)
        )
    deadline, deadline_flag = _deadline(args.deadline, args.max_runtime)
    return EngineOptions(
        deadline=deadline,
        deadline_flag=deadline_flag,
        shard=shard,
        budget=budget,
        budget_unit=budget_unit,
        retry_failed=args.retry_failed,
        retry_ambiguous=args.retry_ambiguous,
        limit=args.limit,
        drain_timeout=args.drain_timeout,
        cancel_on_exit=args.cancel_on_exit,
        embed_metadata=not args.no_embed_metadata,
        exclusive=frozenset({ALL_KEYS}) if args.exclusive_account else exclusive,
        siblings=args.siblings,
    )


async def _on_the_emulator(batch: Callable[..., Awaitable[RunResult]]) -> RunResult:
    """``--emulator``: the run against a Krea emulator started in this process."""
    from runner.emulator.server import run_emulator

    async with run_emulator() as emulator:
        logging.getLogger("runner").info("using the built-in emulator at %s", emulator.url)
        return await batch(api_base=emulator.url, token=EMULATOR_TOKEN)


def _merge(args: argparse.Namespace) -> int:
    try:
        result = merge(args.sources, args.out, partial=args.partial)
    except IncompleteMerge as exc:
        print(f"krea-batch: {exc}", file=sys.stderr)
        return ExitCode.STOPPED
    except OSError as exc:  # a disk or a bucket failing midway: the next run resumes
        print(
            f"krea-batch: merge stopped: {exc}; run the same command again to finish it",
            file=sys.stderr,
        )
        return ExitCode.STOPPED
    counts = result.summary["counts"]
    for missing in result.missing:
        print(f"krea-batch: not merged (--partial): {missing}", file=sys.stderr)
    ambiguous = f", {counts['ambiguous_jobs']} ambiguous" if counts["ambiguous_jobs"] else ""
    verb = "already merged" if result.unchanged else "merged"
    print(
        f"{verb} {len(args.sources)} folders into {args.out}: {counts['completed']} completed, "
        f"{counts['failed']} failed{ambiguous}"
    )
    if result.exit_code == ExitCode.FAILED:
        print(
            "some jobs failed: `run … --retry-failed` in their shard folder, then merge again",
            file=sys.stderr,
        )
    return result.exit_code


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.image)
    try:
        found = read_provenance(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"{path}: cannot read it as an image ({exc})") from exc
    if found is None:
        raise UsageError(f"{path} carries no krea-batch provenance")
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=1))
        return ExitCode.OK
    shown = {**found}
    if shown.get("seed") is None and isinstance(found.get("server_seed"), int):
        shown["seed"] = f"{found['server_seed']} (none was sent: the server chose it)"
    elif shown.get("seed") is None:
        shown["seed"] = "none sent (the server chose one and did not say which)"
    for name in ("prompt", "model", "endpoint", "seed", "job_id", "key", "krea_batch"):
        print(f"{name + ':':<11} {shown.get(name, '–')}")
    print(f"{'params:':<11} {json.dumps(found.get('params', {}), ensure_ascii=False)}")
    return ExitCode.OK


def _report(args: argparse.Namespace) -> int:
    with readable(args.out, args.state_dir) as (root, _):
        layout = Layout(root)
        if not layout.results.exists():
            raise UsageError(
                f"{args.out} holds no results.jsonl: is it a krea-batch output folder?"
            )
        summary = read_summary(layout.summary)
        if not is_url(args.out):
            path = write_report(layout.root, iter_latest_records(layout.results), summary)
            print(f"wrote {path}")
            return ExitCode.OK
        tree = Tree(args.out, args.state_dir)
        records = iter_latest_records(layout.results)  # read while the folder is at hand
        with tempfile.TemporaryDirectory(prefix="krea-batch-") as scratch:
            page = write_report(Path(scratch), records, summary, shards=tree)
            try:
                for path in sorted(Path(scratch).rglob("*")):
                    if path.is_file():
                        tree.put(path, path.relative_to(scratch).as_posix())
            except OSError as exc:
                raise UsageError(f"{args.out}: cannot write the report there ({exc})") from exc
    print(f"wrote {tree}/{page.name}")
    return ExitCode.OK


def _deadline(deadline: str | None, max_runtime: str | None) -> tuple[float | None, str]:
    """The earlier of --deadline and now + --max-runtime, as epoch seconds, and its flag."""
    candidates: list[tuple[float, str]] = []
    try:
        if deadline is not None:
            moment = parse_deadline(deadline)
            now = time.time()
            if time.localtime(moment).tm_yday != time.localtime(now).tm_yday:
                hours, minutes = divmod(int(moment - now) // 60, 60)
                logging.getLogger("runner").warning(
                    "deadline %s is tomorrow (in %dh%02dm)", deadline, hours, minutes
                )
            candidates.append((moment, "--deadline"))
        if max_runtime is not None:
            candidates.append((time.time() + parse_duration(max_runtime), "--max-runtime"))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return min(candidates) if candidates else (None, "--deadline")


def _serve(args: argparse.Namespace) -> int:
    tokens = tuple(read_tokens_file(args.token_file)) if args.token_file else ()
    values = {name: getattr(args, name) for _, name, _, _ in EMULATOR_FLAGS}
    try:
        config = config_from_flags(values, tokens=tokens)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    from runner.emulator.server import serve_forever

    asyncio.run(serve_forever(config, args.host, args.port))
    return ExitCode.OK


COMMANDS = {
    "plan": plan_command,
    "models": _models,
    "run": _run,
    "report": _report,
    "inspect": _inspect,
    "status": status_command,
    "merge": _merge,
    "verify": verify_command,
    "serve": _serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log_format = "json" if json_logs(argv) else "text"
    refusal = refuse_secret_flags(argv)
    if refusal is not None:
        return _fail(f"krea-batch: error: {refusal}", ExitCode.USAGE, log_format)
    args = build_parser(json_errors=log_format == "json").parse_args(argv)
    configure_logging(args.verbose, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        return _fail(f"krea-batch: error: {exc}", ExitCode.USAGE, args.log_format)
    except RunnerError as exc:
        return _fail(f"krea-batch: {exc}", ExitCode.FAILED, args.log_format)
    except KeyboardInterrupt:
        text = "krea-batch: interrupted; run the same command again to resume"
        return _fail(text, ExitCode.STOPPED, args.log_format)
    except BrokenPipeError:
        return ExitCode.OK


def _fail(text: str, code: int, log_format: str) -> int:
    """Say why the command ends (a JSON line with --log-format json) and return its code."""
    if log_format == "json":
        print(json_line("error", text, exit_code=int(code)), file=sys.stderr)
    else:
        print(text, file=sys.stderr)
    return code
