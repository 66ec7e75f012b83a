"""``krea-batch status``: what an output folder holds, read from its journal, offline by default."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.api.client import DEFAULT_API_BASE, KreaClient
from runner.api.remote import JobStatus
from runner.api.secrets import find_tokens
from runner.catalog import Catalog, load_catalog
from runner.cli.status_keys import key_line, keys_of, last_run_keys
from runner.engine.ambiguity import Risk, is_ambiguous, risk_of, worst_cost
from runner.errors import ApiError, UsageError
from runner.exitcodes import ExitCode
from runner.money import spend_text
from runner.outputs import STATE_DIR, Layout, RecordStatus, latest_records
from runner.outputs.destination import is_url
from runner.outputs.identity import EMULATOR, api_identity
from runner.outputs.layout import RESULTS_NAME, SUMMARY_NAME, path_text
from runner.outputs.live import read_live, read_running, read_status_file
from runner.outputs.summary import read_summary
from runner.outputs.trees import Tree
from runner.state.events import Done
from runner.state.figures import Counts
from runner.state.journal import read_events, records_at
from runner.state.ledger import KeyState, fold, folder_counts
from runner.state.records import ResultRecord
from runner.wording import counted, duration, them


@dataclass
class FolderStatus:
    """What a folder holds (``counts``, over all its runs), why jobs failed, and the jobs still
    running remotely."""

    root: str
    counts: Counts = field(default_factory=Counts)
    in_flight: dict[str, str] = field(default_factory=dict)  # key → remote job id
    unknown_submits: list[str] = field(default_factory=list)  # answer lost; next run checks
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key → candidate ids
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    remote_status: dict[str, str] = field(default_factory=dict)  # filled by --refresh
    holders: dict[str, str | None] = field(default_factory=dict)  # job id → its key's fingerprint
    risk: Risk = field(default_factory=lambda: Risk(0, 0, 0))  # of sending ambiguous ones again
    retry_cost: str | None = None  # what the images ``risk`` may pay twice cost, if known
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # a pool's, by fingerprint
    not_sent: int = 0  # jobs of the last run's manifest never submitted (it stopped early)
    last_stopped: str | None = None  # why the last run stopped early, from its summary
    live: bool = False  # a run holds the folder now: it, not the next one, settles what is open
    asked: str | None = None  # the API --refresh asked

    def to_json(self) -> dict[str, Any]:
        return {
            "out": path_text(self.root),
            "counts": {
                "completed": self.counts.completed,
                "failed": self.counts.failed,
                "in_flight": len(self.in_flight),
                "unknown_submits": len(self.unknown_submits),
                "ambiguous": len(self.ambiguous),
                "not_sent": self.not_sent,
            },
            "last_run_stopped": self.last_stopped,
            "estimated_spend_units": round(self.counts.spend_units, 3),
            "estimated_spend_usd": round(self.counts.spend_usd, 4),
            "failure_reasons": dict(
                Counter(reason_kind(reason) for _, reason in self.failures).most_common()
            ),
            "failed": [{"key": k, "error": e} for k, e in self.failures],
            "ambiguous": [{"key": k, "candidates": list(c)} for k, c in self.ambiguous.items()],
            "retry_ambiguous_pays_twice_at_most": self.risk.twice,
            "retry_ambiguous_worst_cost": self.retry_cost,
            "in_flight": [
                {"key": k, "job_id": j, "remote_status": self.remote_status.get(j)}
                for k, j in self.in_flight.items()
            ],
            "asked": self.asked,
            "keys": self.keys,
        }


_IDS = re.compile(
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b[0-9a-f]{16,}\b"
)


def reason_kind(reason: str) -> str:
    """A failure reason without the ids in it, so that one cause is counted once."""
    return _IDS.sub("…", reason)


def read_status(root: Path, name: str | None = None) -> FolderStatus:
    """Fold the folder's journal (read only: a run may be writing it right now). A folder
    without one (a merged folder, one copied without its state) is read from its
    results.jsonl, each record as the journal's ``done`` line of its job would say."""
    layout = Layout(root)
    candidates: dict[str, tuple[str, ...]] = {}
    records: list[ResultRecord] = []
    if layout.journal.exists():
        ledger = fold(read_events(layout.journal))
    elif layout.results.exists():
        records = latest_records(layout.results)
        ledger = fold((0, Done(r.key, r)) for r in records)
        candidates = {r.key: tuple(r.candidates) for r in records if r.candidates}
    else:
        raise UsageError(
            f"{name or root} has no {STATE_DIR}/journal.jsonl nor results.jsonl: is it a "
            "krea-batch output folder?"
        )
    status = FolderStatus(name or str(root), folder_counts(ledger))
    for key, state in ledger.states.items():
        if state.doubt is not None:
            status.ambiguous[key] = state.candidates or candidates.get(key, ())
        elif state.done == RecordStatus.FAILED:
            status.failures.append((key, str(state.done_error)))
        elif state.done is not None:
            continue
        elif state.job_id is not None:
            status.in_flight[key] = state.job_id
            status.holders[state.job_id] = state.account
        elif state.pending_since is not None:
            status.unknown_submits.append(key)
    status.risk = risk_of(ledger.states)
    if status.risk.jobs:
        if layout.journal.exists():  # the ambiguous jobs' records, where there are some yet
            offsets = [s.done_at for s in ledger.states.values() if is_ambiguous(s)]
            records = list(records_at(layout.journal, [o for o in offsets if o is not None]))
        status.retry_cost = retry_cost(ledger.states, status.risk, records)
    status.keys = keys_of(ledger.states.values(), last_run_keys(layout))
    return status


def price_of(catalog: Catalog, record: ResultRecord) -> tuple[float | None, float | None]:
    """(US dollars, compute units) one send of the record's job costs, by the catalog's
    estimate for its model and request (None where no price is published). The record's own
    cost is what was billed, which for an ambiguous job is its candidates'."""
    model = catalog.get(record.model)
    if model is None:
        return None, None
    body = {"prompt": record.prompt, **record.params}
    return model.estimate_usd(body), model.estimate_units(body)


def retry_cost(
    states: Mapping[str, KeyState], risk: Risk, records: Iterable[ResultRecord]
) -> str | None:
    """What ``run … --retry-ambiguous`` says the worst case costs, priced from the ambiguous
    jobs' records; None while a job has none (its candidates not collected yet) or its record
    no price."""
    catalog = load_catalog()
    prices = {record.key: price_of(catalog, record) for record in records}
    ambiguous = (key for key, state in states.items() if is_ambiguous(state))
    return worst_cost(risk, (prices.get(key, (None, None)) for key in ambiguous))


def in_flight_parts(status: FolderStatus, settles: str) -> list[str]:
    """The jobs in flight: submitted and not collected, all the folder knows of them; with
    --refresh, where the API says they stand (a completed one waits for its download, not
    for the API)."""
    standing = Counter(_standing(status.remote_status.get(j)) for j in status.in_flight.values())
    parts = []
    if n := standing["running"]:
        parts.append(f"{n} still running at the API")
    if n := standing[JobStatus.COMPLETED]:
        parts.append(f"{n} completed at the API, not downloaded yet: {settles} downloads {them(n)}")
    if n := standing[JobStatus.FAILED]:
        parts.append(f"{n} failed at the API: {settles} retries {them(n)} or records the failure")
    if n := standing[JobStatus.CANCELLED]:
        parts.append(f"{n} cancelled at the API: {settles} records {them(n)} failed")
    if n := standing[None]:
        how = "the API could not say how" if status.asked else "--refresh asks the API how"
        stand = "it stands" if n == 1 else "they stand"
        parts.append(f"{n} in flight, not collected yet ({how} {stand})")
    return parts


def _standing(remote: str | None) -> str | None:
    """A job's status as --refresh read it: ended (its status), ``running``, or None (not
    asked, or no answer)."""
    try:
        status = JobStatus(str(remote))
    except ValueError:  # not asked ("None"), or "unknown (…)"
        return None
    return status if status.terminal else "running"


def render_status(status: FolderStatus, show_failed: int = 20) -> str:
    data = status.to_json()
    counts = data["counts"]
    settles = "the running process" if status.live else "the next run"
    parts = [f"{counts['completed']} completed", f"{counts['failed']} failed"]
    parts += in_flight_parts(status, settles)
    if n := counts["unknown_submits"]:
        parts.append(f"{n} submitted without an answer ({settles} checks {them(n)})")
    if counts["ambiguous"]:
        parts.append(f"{counts['ambiguous']} ambiguous")
    if status.not_sent:
        parts.append(f"{counted(status.not_sent, 'job')} not sent yet")
    lines = [
        f"{status.root}: {', '.join(parts)}",
        f"estimated spend: {spend_text(status.counts.spend_usd, status.counts.spend_units)}",
    ]
    if status.last_stopped:
        lines.append(f"the last run stopped early: {status.last_stopped}")
    if data["failure_reasons"]:
        lines.append("failure reasons:")
        lines += [f"  {n:>5}  {reason}" for reason, n in data["failure_reasons"].items()]
        lines.append("failed jobs:")
        lines += [f"  {key}  {error}" for key, error in status.failures[:show_failed]]
        if len(status.failures) > show_failed:
            lines.append(f"  … and {len(status.failures) - show_failed} more (--json lists all)")
    if status.ambiguous:
        lines.append(
            "ambiguous (a submit's answer was lost; not sent again; candidates' images are in "
            "images/_unmatched/):"
        )
        lines.append(
            f"  {status.risk.sentence(status.retry_cost)}; `run … --retry-ambiguous` does that"
        )
        for key, candidates in status.ambiguous.items():
            lines.append(f"  {key}  {', '.join(candidates) or '(no candidate listed)'}")
    if status.keys:
        lines.append("keys:")
        lines += [key_line(name, figures) for name, figures in status.keys.items()]
    if status.in_flight:
        asked = f"; {status.asked} asked now" if status.asked else ""
        lines.append(f"in flight remotely ({settles} polls them{asked}):")
        for key, job_id in status.in_flight.items():
            remote = status.remote_status.get(job_id)
            lines.append(f"  {key}  {job_id}" + (f"  {remote}" if remote else ""))
    return "\n".join(lines)


async def refresh(
    status: FolderStatus, clients: Sequence[KreaClient], any_key: bool = False
) -> None:
    """Ask the API for the current status of every job still in flight, each with the key
    that holds it (a job journaled without one, or ``any_key`` for a server on this machine
    that takes any token: the first key)."""
    by_key = {client.account: client for client in clients}
    for job_id in status.in_flight.values():
        holder = status.holders.get(job_id)
        client = clients[0] if holder is None or any_key else by_key.get(holder)
        if client is None:
            status.remote_status[job_id] = f"unknown (held by key {holder}, not given)"
            continue
        try:
            remote = await client.get_job(job_id)
            status.remote_status[job_id] = remote.status.value
        except ApiError as exc:
            status.remote_status[job_id] = f"unknown ({exc})"


@contextlib.contextmanager
def readable(out: str, state_dir: str | None) -> Iterator[tuple[Path, Path]]:
    """A local folder holding what ``out`` holds (its journal, or its results.jsonl and
    summary.json), and the folder of its live status.json. For a URL: the state folder of
    the run that writes it, where there is one; else a copy of the URL's own files."""
    if not is_url(out):
        yield Path(out), Path(out)
        return
    tree = Tree(out, state_dir)
    if Layout(tree.state).journal.exists():
        yield tree.state, tree.state
        return
    with tempfile.TemporaryDirectory(prefix="krea-batch-") as scratch:
        try:
            for name in (RESULTS_NAME, SUMMARY_NAME):
                tree.fetch(name, Path(scratch) / name)
        except OSError as exc:
            raise UsageError(f"{out}: cannot read it ({exc})") from exc
        yield Path(scratch), tree.state


def status_command(args: argparse.Namespace) -> int:
    """``krea-batch status OUT``: the folder, the run holding it now (or the one that died
    holding it), why the last run stopped, and with --refresh what the API says."""
    with readable(args.out, args.state_dir) as (root, live_root):
        status = read_status(root, args.out)
        live = read_live(live_root)
        died = read_running(live_root) if live is None else None
        last = read_summary(Layout(root).summary)
        made_with = (read_status_file(live_root) or last).get("api_base")
    status.live = live is not None
    if live is None:
        last_run(status, last)
    if args.refresh and status.in_flight:
        _refresh(status, args, made_with if isinstance(made_with, str) else None)
    if args.json:
        print(json.dumps({**status.to_json(), "live": live}, indent=1))
        return ExitCode.OK
    if live is not None:
        eta = live["eta_seconds"]
        # The counts come once, from the journal below: two sources read a moment apart
        # would disagree. The live file adds what only the running process knows.
        print(
            f"running now (pid {live['pid']}, heartbeat {live['heartbeat_at']}): "
            f"{live['jobs_per_second']:.2f} jobs/s"
            + (f", ETA {duration(eta)}" if eta is not None else "")
        )
    elif died is not None:
        print(
            f"the last run (pid {died.get('pid')}) did not finish: its last heartbeat was at "
            f"{died.get('heartbeat_at')} (killed, or its machine stopped); run the same "
            "command again to resume"
        )
    print(render_status(status))
    return ExitCode.OK


def last_run(status: FolderStatus, summary: Mapping[str, Any]) -> None:
    """What the last run's summary adds: why it stopped early, and the jobs it never sent."""
    counts = summary.get("counts")
    unfinished = counts.get("unfinished") if isinstance(counts, dict) else None
    if isinstance(unfinished, int):
        open_ones = len(status.in_flight) + len(status.unknown_submits)
        status.not_sent = max(0, unfinished - open_ones)
    stopped = summary.get("stopped")
    status.last_stopped = stopped if isinstance(stopped, str) and stopped else None


def _refresh(status: FolderStatus, args: argparse.Namespace, made_with: str | None) -> None:
    """Ask the API the folder was made against (or --api-base) about its jobs in flight."""
    base = args.api_base or made_with or DEFAULT_API_BASE
    tokens = find_tokens(args.token_file)
    if not tokens and api_identity(base) != EMULATOR:  # a server on this machine: no token
        raise UsageError(
            f"--refresh asks {base}, which needs an API token: set KREA_API_TOKEN or --token-file"
        )

    async def ask() -> None:
        clients = [KreaClient(base, token) for token in tokens or ["anonymous"]]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            await refresh(status, clients, any_key=not tokens)

    asyncio.run(ask())
    status.asked = base
