"""The ``krea-batch`` command line: parses arguments, configures logging, calls one function."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from PIL import UnidentifiedImageError

from runner import __version__
from runner.api.client import DEFAULT_API_BASE, KreaClient
from runner.api.secrets import find_token, read_token_file
from runner.api.webhooks import WebhookSettings
from runner.batch import run_batch
from runner.catalog import load_catalog
from runner.cli.logs import configure_logging
from runner.cli.progress import Progress
from runner.cli.status import read_status, refresh, render_status
from runner.cli.views import catalog_table, model_detail, plan_text
from runner.emulator import EmulatorConfig, run_emulator, serve_forever
from runner.emulator.config import FLAGS as EMULATOR_FLAGS
from runner.emulator.config import config_from_flags
from runner.engine import EngineOptions, RunResult
from runner.errors import RunnerError, UsageError
from runner.exitcodes import ExitCode
from runner.manifest import expand, load_manifest
from runner.manifest.plan import make_plan
from runner.money import parse_budget, spend_text
from runner.naming import DEFAULT_TEMPLATE, add_name, check_names, check_template
from runner.outputs import Layout, latest_records
from runner.outputs.destination import is_url
from runner.outputs.live import read_live
from runner.outputs.merge import merge_folders, parse_shard
from runner.outputs.provenance import read as read_provenance
from runner.outputs.report import write_report
from runner.outputs.summary import read_summary
from runner.settings import (
    FORMATS,
    POLL_MODES,
    SETTING_FLAGS,
    SETTING_NAMES,
    parse_deadline,
    parse_duration,
)

DESCRIPTION = """\
Run thousands of Krea text-to-image jobs from a YAML manifest: concurrently, under rate
limits, resumably, and never paying for a job twice. Images land in OUT/images, one record
per job in OUT/results.jsonl."""

EMULATOR_TOKEN = "emulator"  # what --emulator sends as its token
EXAMPLES = """\
examples:
  krea-batch plan jobs.yaml                    check a manifest: jobs per model, estimated cost
  krea-batch run jobs.yaml --emulator          try it on the built-in emulator, no token needed
  KREA_API_TOKEN=... krea-batch run jobs.yaml --out out
  krea-batch run jobs.yaml --out out           again: finished jobs are skipped
  krea-batch status out                        what a folder holds, offline
  krea-batch models flux-1-dev                 one model's parameters and price"""


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags: ``--token`` must never quietly become ``--token-file``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._argv: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Name unknown flags, with the closest known one, but never echo values: one of them
        may be a secret. The usage shown is the command's, not the whole tool's."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            super().error(message)
        words = message.removeprefix(prefix).split()
        flags = [word.split("=", 1)[0] for word in words if word.startswith("-")]
        parser = self._command_parser()
        known = [flag for action in parser._actions for flag in action.option_strings]
        parts = []
        for flag in flags:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            parts.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        text = "unknown flag" + ("s " if len(parts) > 1 else " ") + ", ".join(parts)
        if not flags:
            text = f"unexpected argument{'s' if len(words) > 1 else ''} (values not shown)"
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: {text}\n")

    def _command_parser(self) -> argparse.ArgumentParser:
        """The parser of the command named on the command line, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word in self._argv:
                    if word in action.choices:
                        return action.choices[word]  # type: ignore[no-any-return]
        return self


# Flags that would carry a secret on the command line (visible in ps, shell history, cron mail).
_SECRET_FLAG = re.compile(r"--?(api[-_]?)?(token|key|secret|password|auth)(=.*)?", re.IGNORECASE)


def _refuse_secret_flags(argv: Sequence[str]) -> str | None:
    """The error for a secret-looking flag, naming the flag and never its value."""
    for arg in argv:
        if _SECRET_FLAG.fullmatch(arg):
            flag = arg.split("=", 1)[0]
            return (
                f"{flag} is not accepted: a token on the command line ends up in shell history "
                "and process lists; set KREA_API_TOKEN or pass --token-file FILE"
            )
    return None


def _global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``-v`` and ``--log-format``, before the command or after it (the later one wins)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="debug logging",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="json: one JSON object per log line, for journald, cron mail, jq (default: text)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="krea-batch",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"krea-batch {__version__}")
    _global_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = commands.add_parser("plan", help="validate a manifest and show what it would run")
    plan.add_argument("manifest")
    plan.add_argument("--show", type=int, default=0, metavar="N", help="print the first N specs")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _setting_flags(plan, "the run's settings: those that change what is planned are checked")

    run = commands.add_parser("run", help="run a manifest's jobs into an output folder")
    run.add_argument("manifest")
    run.add_argument(
        "--out",
        default="out",
        type=_folder,
        help="output folder, or a URL fsspec knows: s3://bucket/prefix, gs://, hf://… "
        "(default: out)",
    )
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help="with a URL --out: the local folder for the journal and the shards being made "
        "(default: one per URL under ~/.local/state/krea-batch)",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument("--emulator", action="store_true", help="use the built-in Krea emulator")
    where.add_argument("--api-base", metavar="URL", help="another Krea-compatible server")
    run.add_argument(
        "--token-file", help="read the API token from this file ($KREA_API_TOKEN otherwise)"
    )
    _setting_flags(run, "each also a key of the manifest's run: block; a flag beats the manifest")
    run.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    run.add_argument(
        "--retry-ambiguous",
        action="store_true",
        help="send ambiguous jobs again (a lost answer nothing could match), after saying how "
        "many images that may pay for twice",
    )
    run.add_argument("--limit", type=int, metavar="N", help="only the first N jobs")
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="after Ctrl-C, wait this long for jobs in flight (default 120)",
    )
    run.add_argument(
        "--cancel-on-exit",
        action="store_true",
        help="when interrupted, cancel remote jobs instead of leaving them running",
    )
    run.add_argument(
        "--no-embed-metadata",
        action="store_true",
        help="leave images as the API sent them (by default PNG text chunks and JPEG XMP carry "
        "prompt, model, seed, params and job id: `krea-batch inspect IMAGE`)",
    )
    run.add_argument(
        "--deadline",
        metavar="TIME",
        help="stop submitting at HH:MM (its next occurrence) or an ISO time, drain, exit 3",
    )
    run.add_argument("--max-runtime", metavar="DURATION", help="stop submitting after 8h, 90m, …")
    run.add_argument(
        "--budget",
        metavar="AMOUNT",
        help="never submit a job that would take this run's estimated spend over AMOUNT: "
        "dollars (25, 25usd, $25) or compute units (500cu)",
    )
    run.add_argument("--shard", metavar="I/N", help="run only shard I of N (split by job key)")
    run.add_argument("--notify-url", metavar="URL", help="POST the JSON summary here at the end")
    run.add_argument(
        "--webhook-url",
        metavar="URL",
        help="public address of this machine for Krea's webhooks (with --webhook-listen); "
        "polls then only every --webhook-poll-interval, as a safety net",
    )
    run.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="where this run takes webhook deliveries, e.g. 0.0.0.0:8080",
    )
    run.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="keep this file in Prometheus text format during the run (node_exporter textfile)",
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between progress lines when not on a terminal",
    )

    status = commands.add_parser("status", help="what an output folder holds (offline)")
    status.add_argument("out", type=_folder)
    status.add_argument("--refresh", action="store_true", help="ask the API about jobs in flight")
    status.add_argument("--api-base", metavar="URL", help="a Krea-compatible server for --refresh")
    status.add_argument("--token-file", help="read the API token from this file")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    merge = commands.add_parser("merge", help="combine the output folders of several shards")
    merge.add_argument("sources", nargs="+", metavar="OUT")
    merge.add_argument("--out", required=True, type=_folder, help="the merged folder")

    report = commands.add_parser("report", help="write OUT/report.html, the gallery of a run")
    report.add_argument("out", type=_folder)

    inspect = commands.add_parser(
        "inspect", help="the prompt, model, seed and job written into an image by a run"
    )
    inspect.add_argument("image", help="an image a run wrote (PNG or JPEG)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    serve = commands.add_parser("serve", help="run the Krea API emulator")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787)
    serve.add_argument("--token-file", help="accept only the token in this file")
    for flag, name, parse, text in EMULATOR_FLAGS:
        serve.add_argument(flag, dest=name, type=parse, help=text)

    models = commands.add_parser("models", help="list the models, or one model's parameters")
    models.add_argument("name", nargs="?")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    for command in commands.choices.values():
        _global_flags(command, defaults=False)
    return parser


def _setting_flags(parser: argparse.ArgumentParser, text: str) -> None:
    """The run settings as flags, from the one table in runner.settings."""
    settings = parser.add_argument_group("run settings", text)
    for name in SETTING_NAMES:
        setting = SETTING_FLAGS[name]
        settings.add_argument(
            "--" + name.replace("_", "-"),
            type=int if setting.whole else str,
            choices={"poll_mode": POLL_MODES, "format": FORMATS}.get(name),
            metavar=None if name == "poll_mode" else setting.metavar,
            help=setting.text(name),
        )


def _plan(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in SETTING_NAMES}
    manifest = load_manifest(args.manifest, overrides=overrides)
    template = manifest.settings.name_template
    if template != DEFAULT_TEMPLATE:  # the names a run would give, checked as it would
        stem = check_template(template)
        names: dict[str, int] = {}
        for spec in expand(manifest):
            add_name(names, stem, template, spec)
        check_names(names, template, Path("out") / "images")
    plan = make_plan(manifest, show=max(args.show, 0))
    print(
        json.dumps(plan.to_json(), ensure_ascii=False, indent=1) if args.json else plan_text(plan)
    )
    return ExitCode.OK


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


def _folder(value: str) -> str:
    """A folder argument: an empty one (an unset $OUT) would mean the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty folder name (is a variable like $OUT unset?)")
    return value


def _run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in SETTING_NAMES}
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit takes a whole number of at least 1")
    manifest = load_manifest(args.manifest, overrides=overrides)
    for warning in manifest.warnings:
        logging.getLogger("runner").warning(warning)
    token = None if args.emulator else find_token(args.token_file)
    webhook = None
    if args.webhook_url or args.webhook_listen:
        if not (args.webhook_url and args.webhook_listen):
            raise UsageError("--webhook-url and --webhook-listen go together")
        webhook = WebhookSettings.parse(args.webhook_url, args.webhook_listen)
    budget, budget_unit = parse_budget(args.budget) if args.budget else (None, "usd")
    options = EngineOptions(
        deadline=_deadline(args.deadline, args.max_runtime),
        shard=parse_shard(args.shard) if args.shard else None,
        budget=budget,
        budget_unit=budget_unit,
        retry_failed=args.retry_failed,
        retry_ambiguous=args.retry_ambiguous,
        limit=args.limit,
        drain_timeout=args.drain_timeout,
        cancel_on_exit=args.cancel_on_exit,
        embed_metadata=not args.no_embed_metadata,
    )
    progress = Progress(live=sys.stderr.isatty(), interval=args.progress_interval)
    if sys.stderr.isatty() and args.log_format == "text":
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
    )
    try:
        if args.emulator:
            result = asyncio.run(_on_the_emulator(batch))
        else:
            result = asyncio.run(batch(api_base=args.api_base, token=token))
    finally:
        progress.close()
    counts = result.counts
    ambiguous = f", {counts.ambiguous_jobs} ambiguous" if counts.ambiguous_jobs else ""
    out = str(args.out).rstrip("/")
    sharded = manifest.settings.format != "files"
    if is_url(out) or sharded:
        where = f"shards: {out}/shards" if sharded else f"images: {out}/images"
    else:
        where = f"gallery: {out}/report.html"
    print(
        f"{counts.completed} completed, {counts.failed} failed{ambiguous}, "
        f"{counts.skipped} already done, {counts.unfinished} unfinished; "
        f"estimated spend {spend_text(counts.spend_usd, counts.spend_units)}\n"
        f"results: {out}/results.jsonl   {where}"
    )
    if result.stopped:
        print(
            f"stopped early: {result.stopped}; run the same command again to resume",
            file=sys.stderr,
        )
    if counts.failed:
        print(
            f"{counts.failed} failed: `krea-batch status {out}` groups the reasons; "
            "`run … --retry-failed` sends them again (a job the API says is gone may still have "
            "been paid for)",
            file=sys.stderr,
        )
    return result.exit_code


async def _on_the_emulator(batch: Callable[..., Awaitable[RunResult]]) -> RunResult:
    """``--emulator``: the run against a Krea emulator started in this process."""
    async with run_emulator(EmulatorConfig()) as emulator:
        logging.getLogger("runner").info("using the built-in emulator at %s", emulator.url)
        return await batch(api_base=emulator.url, token=EMULATOR_TOKEN)


def _status(args: argparse.Namespace) -> int:
    status = read_status(Path(args.out))
    if args.refresh and status.in_flight:
        token = find_token(args.token_file)
        if token is None and args.api_base is None:
            raise UsageError("--refresh needs an API token: set KREA_API_TOKEN or --token-file")

        async def ask() -> None:
            async with KreaClient(
                args.api_base or DEFAULT_API_BASE, token or "anonymous"
            ) as client:
                await refresh(status, client)

        asyncio.run(ask())
    live = read_live(Path(args.out))
    if args.json:
        print(json.dumps({**status.to_json(), "live": live}, indent=1))
    else:
        if live is not None:
            eta = live["eta_seconds"]
            # The counts come once, from the journal below: two sources read a moment apart
            # would disagree. The live file adds what only the running process knows.
            print(
                f"running now (pid {live['pid']}, heartbeat {live['heartbeat_at']}): "
                f"{live['jobs_per_second']:.2f} jobs/s"
                + (f", ETA {eta:.0f} s" if eta is not None else "")
            )
        print(render_status(status))
    return ExitCode.OK


def _merge(args: argparse.Namespace) -> int:
    summary = merge_folders([Path(s) for s in args.sources], Path(args.out))
    counts = summary["counts"]
    print(
        f"merged {len(args.sources)} folders into {args.out}: {counts['completed']} completed, "
        f"{counts['failed']} failed"
    )
    return ExitCode.OK


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
    if shown.get("seed") is None:
        shown["seed"] = "none sent (the server chose one)"
    for name in ("prompt", "model", "endpoint", "seed", "job_id", "key", "krea_batch"):
        print(f"{name + ':':<11} {shown.get(name, '–')}")
    print(f"{'params:':<11} {json.dumps(found.get('params', {}), ensure_ascii=False)}")
    return ExitCode.OK


def _report(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.out))
    if not layout.results.exists():
        raise UsageError(f"{layout.root} holds no results.jsonl: is it a krea-batch output folder?")
    summary = read_summary(layout.summary)
    path = write_report(layout.root, latest_records(layout.results), summary)
    print(f"wrote {path}")
    return ExitCode.OK


def _deadline(deadline: str | None, max_runtime: str | None) -> float | None:
    """The earlier of --deadline and now + --max-runtime, as epoch seconds."""
    candidates = []
    try:
        if deadline is not None:
            moment = parse_deadline(deadline)
            now = time.time()
            if time.localtime(moment).tm_yday != time.localtime(now).tm_yday:
                hours, minutes = divmod(int(moment - now) // 60, 60)
                logging.getLogger("runner").warning(
                    "deadline %s is tomorrow (in %dh%02dm)", deadline, hours, minutes
                )
            candidates.append(moment)
        if max_runtime is not None:
            candidates.append(time.time() + parse_duration(max_runtime))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return min(candidates) if candidates else None


def _serve(args: argparse.Namespace) -> int:
    token = read_token_file(args.token_file) if args.token_file else None
    values = {name: getattr(args, name) for _, name, _, _ in EMULATOR_FLAGS}
    try:
        config = config_from_flags(values, token=token)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    asyncio.run(serve_forever(config, args.host, args.port))
    return ExitCode.OK


COMMANDS = {
    "plan": _plan,
    "models": _models,
    "run": _run,
    "report": _report,
    "inspect": _inspect,
    "status": _status,
    "merge": _merge,
    "serve": _serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    refusal = _refuse_secret_flags(sys.argv[1:] if argv is None else argv)
    if refusal is not None:
        print(f"krea-batch: error: {refusal}", file=sys.stderr)
        return ExitCode.USAGE
    args = _parser().parse_args(argv)
    configure_logging(args.verbose, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"krea-batch: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except RunnerError as exc:
        print(f"krea-batch: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print("krea-batch: interrupted; run the same command again to resume", file=sys.stderr)
        return ExitCode.STOPPED
    except BrokenPipeError:
        return ExitCode.OK
