"""The command line's parser: its commands and flags (the run settings' flags from the table in
runner.settings), flags never abbreviated, and mistakes explained without echoing a value."""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Sequence

from runner import __version__
from runner.cli.run_flags import ownership_flags
from runner.cli.strict import StrictParser
from runner.coordination import COORDINATOR_VARIABLE
from runner.emulator.config import FLAGS as EMULATOR_FLAGS
from runner.integers import int_flag
from runner.settings import FORMATS, POLL_MODES, SETTING_FLAGS, SETTING_NAMES

DESCRIPTION = """\
Run thousands of Krea text-to-image jobs from a YAML manifest: concurrently, under rate
limits, resumably, and never paying for a job twice. Images land in OUT/images, one record
per job in OUT/results.jsonl."""

EXAMPLES = """\
examples:
  krea-batch plan jobs.yaml                    check a manifest: jobs per model, estimated cost
  krea-batch run jobs.yaml --emulator          try it on the built-in emulator, no token needed
  KREA_API_TOKEN=... krea-batch run jobs.yaml --out out
  krea-batch run jobs.yaml --out out           again: finished jobs are skipped
  krea-batch status out                        what a folder holds, offline
  krea-batch verify out                        every shard and image against its record
  krea-batch models flux-1-dev                 one model's parameters and price"""


# Flags that would carry a secret on the command line (visible in ps, shell history, cron mail).
_SECRET_FLAG = re.compile(r"--?(api[-_]?)?(token|key|secret|password|auth)(=.*)?", re.IGNORECASE)


def json_logs(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON log lines (known before it is parsed, so that
    its own mistakes are said as JSON too)."""
    pairs = itertools.pairwise(argv)
    return "--log-format=json" in argv or any(a == "--log-format" and b == "json" for a, b in pairs)


def refuse_secret_flags(argv: Sequence[str]) -> str | None:
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
        help="krea-batch's debug lines: one per job (submitted, done, retried)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="json: one JSON object per log line, for journald, cron mail, jq (default: text)",
    )


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    parser = StrictParser(
        prog="krea-batch",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"krea-batch {__version__}")
    _global_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = commands.add_parser("plan", help="validate a manifest and show what it would run")
    plan.add_argument("manifest", metavar="MANIFEST", help="the YAML manifest to check")
    plan.add_argument(
        "--show", type=int_flag(), default=0, metavar="N", help="print the first N specs"
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _shard_flag(
        plan,
        "plan shard I of N (I counts from 1; auto: as `run --shard auto` reads it), and show "
        "every shard of the split: its scheduler task, jobs and estimated cost",
    )
    _coordinator_flag(
        plan, "plan a split whose shards share the account through this Redis (not contacted)"
    )
    _setting_flags(plan, "the run's settings: those that change what is planned are checked")

    run = commands.add_parser("run", help="run a manifest's jobs into an output folder")
    run.add_argument("manifest", metavar="MANIFEST", help="the YAML manifest to run")
    run.add_argument(
        "--out",
        default="out",
        type=_folder,
        metavar="DIR",
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
        "--token-file",
        metavar="FILE",
        help="the API token, or one key per line: a pool of accounts ($KREA_API_TOKEN otherwise)",
    )
    _setting_flags(run, "each also a key of the manifest's run: block; a flag beats the manifest")
    run.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    run.add_argument(
        "--append",
        action="store_true",
        help="add this manifest's jobs to a folder that holds another manifest's, on purpose",
    )
    run.add_argument(
        "--retry-ambiguous",
        action="store_true",
        help="send ambiguous jobs again (a lost answer nothing could match), after saying how "
        "many images that may pay for twice",
    )
    run.add_argument("--limit", type=int_flag(minimum=1), metavar="N", help="only the first N jobs")
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
    _shard_flag(
        run,
        "run only shard I of N (split by job key), with 1/N of --concurrency, --rate-limit and "
        "--budget (with --coordinator: what it leases); I counts from 1 (1/N … N/N). auto: "
        "shard T+1 for a scheduler's task T, counting from 0 (a Slurm array, a Kubernetes "
        "Indexed Job, an AWS Batch array), of the count auto/N, $KREA_BATCH_SHARDS, the "
        "scheduler's or the folder's split",
    )
    _coordinator_flag(
        run,
        "every process of a run leases its keys' slots, request rate and --budget from this "
        "Redis instead of dividing them: redis://HOST:6379 (or rediss://, unix://)",
    )
    ownership_flags(run)
    run.add_argument("--notify-url", metavar="URL", help="POST the JSON summary here at the end")
    run.add_argument(
        "--webhook-url",
        metavar="URL",
        help="public address of this machine for Krea's webhooks (with --webhook-listen); "
        "once deliveries arrive, jobs are looked at only every --webhook-poll-interval, as a "
        "safety net",
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

    state_help = (
        "with a URL: the local state folder of its run (default: the one `run` uses for that "
        "URL; without one, the URL's results.jsonl is read)"
    )
    status = commands.add_parser("status", help="what an output folder holds (offline)")
    status.add_argument(
        "out", type=_folder, metavar="OUT", help="an output folder or the URL a run wrote to"
    )
    status.add_argument("--state-dir", metavar="DIR", help=state_help)
    status.add_argument("--refresh", action="store_true", help="ask the API about jobs in flight")
    status.add_argument("--api-base", metavar="URL", help="a Krea-compatible server for --refresh")
    status.add_argument(
        "--token-file", metavar="FILE", help="the API token(s), as `run --token-file` takes them"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    merge = commands.add_parser(
        "merge",
        help="combine the output folders of a split's shards into one dataset (any format)",
    )
    merge.add_argument(
        "sources",
        nargs="+",
        metavar="INPUT",
        type=_folder,
        help="the shard folders (paths or URLs), all of one format and one manifest",
    )
    merge.add_argument(
        "--out",
        required=True,
        type=_folder,
        metavar="DIR",
        help="the merged folder, new or an earlier merge of the same inputs (a path or URL)",
    )
    merge.add_argument(
        "--partial",
        action="store_true",
        help="merge what is there when shards of the split are missing or unfinished "
        "(without it: nothing is merged, exit 3)",
    )

    verify = commands.add_parser(
        "verify",
        help="check every shard and image of an output folder against what it recorded; "
        "damaged shards are marked for the next run to repair",
    )
    verify.add_argument(
        "out", type=_folder, metavar="OUT", help="the output folder, or the run's --out URL"
    )
    verify.add_argument(
        "--state-dir",
        metavar="DIR",
        help="with a URL: the run's local state folder, which holds the ledger and the records "
        "(default: the one a run of that URL uses)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    report = commands.add_parser("report", help="write OUT/report.html, the gallery of a run")
    report.add_argument(
        "out", type=_folder, metavar="OUT", help="an output folder or the URL a run wrote to"
    )
    report.add_argument("--state-dir", metavar="DIR", help=state_help)

    inspect = commands.add_parser(
        "inspect", help="the prompt, model, seed and job written into an image by a run"
    )
    inspect.add_argument("image", metavar="IMAGE", help="an image a run wrote (PNG or JPEG)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    serve = commands.add_parser("serve", help="run the Krea API emulator")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int_flag(maximum=65535), default=8787)
    serve.add_argument(
        "--token-file",
        metavar="FILE",
        help="accept only the tokens in this file, one a line, each an account of its own "
        "(without it: any token, all one account)",
    )
    for flag, name, parse, text in EMULATOR_FLAGS:
        serve.add_argument(flag, dest=name, type=parse, help=text)

    models = commands.add_parser("models", help="list the models, or one model's parameters")
    models.add_argument(
        "name", nargs="?", metavar="MODEL", help="a model id or alias (none: the whole catalog)"
    )
    models.add_argument("--json", action="store_true", help="machine-readable output")
    for command in commands.choices.values():
        _global_flags(command, defaults=False)
    for each in (parser, *commands.choices.values()):
        each.json_errors = json_errors
    return parser


def _shard_flag(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--shard", metavar="I/N", help=text)


def _coordinator_flag(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--coordinator", metavar="URL", help=f"{text} (default: ${COORDINATOR_VARIABLE})"
    )


def _setting_flags(parser: argparse.ArgumentParser, text: str) -> None:
    """The run settings as flags, from the one table in runner.settings."""
    settings = parser.add_argument_group("run settings", text)
    for name in SETTING_NAMES:
        setting = SETTING_FLAGS[name]
        settings.add_argument(
            "--" + name.replace("_", "-"),
            type=int_flag() if setting.whole else str,
            choices={"poll_mode": POLL_MODES, "format": FORMATS}.get(name),
            metavar=None if name == "poll_mode" else setting.metavar,
            help=setting.text(name),
        )


def _folder(value: str) -> str:
    """A folder argument: an empty one (an unset $OUT) would mean the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty folder name (is a variable like $OUT unset?)")
    return value
