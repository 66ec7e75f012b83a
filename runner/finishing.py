"""The finishing stage of a run: what the folder says of itself once the engine is done
(metadata, summary, dataset card, gallery), and those files put at a remote destination.

Each file is written on its own: one that cannot be (a full disk, an image that will not open)
is a warning, never the loss of the run. results.jsonl is the writer's, already written as
jobs finished.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio

from runner.api.port import Api
from runner.api.webhooks import Receiver
from runner.engine import Engine, RunResult, RunStats
from runner.manifest import Manifest
from runner.outputs import OutputFolder, ResultRecord
from runner.outputs.card import dataset_card, write_card
from runner.outputs.destination import Destination
from runner.outputs.metadata import metadata_rows
from runner.outputs.report import write_report
from runner.outputs.summary import summary
from runner.outputs.writers import Writer
from runner.state.figures import stats_of
from runner.state.journal import records_at
from runner.state.ledger import folder_counts

log = logging.getLogger("runner.batch")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Ran:
    """What the engine's run left: the engine (its ledger), its result, the APIs it used."""

    engine: Engine
    result: RunResult
    apis: list[Api]
    receiver: Receiver | None


@dataclasses.dataclass(frozen=True)
class Finishing:
    """The files a finished run writes, for one folder."""

    folder: OutputFolder
    writer: Writer
    destination: Destination
    manifest: Manifest
    out: str
    base_url: str

    async def finish(self, ran: Ran, started: float, ended: float) -> RunResult:
        """Write the folder's own files; the result, with its summary (and with what could
        not be put at a remote destination among the reasons it is not whole)."""
        folder, result, engine = self.folder, ran.result, ran.engine
        current = self.manifest.settings.format != "files" or _up_to_date(
            folder, result.counts.finished_now
        )
        if not current:
            _best_effort(folder.layout.metadata, lambda: self._metadata(engine), None)
        result.summary = self._summary(ran, started, ended)
        _best_effort(folder.summary_path, lambda: folder.write_summary(result.summary), None)
        if result.counts.finished_now or not folder.layout.card.exists():
            self._card(result)
        if not current:
            summary = result.summary
            report = functools.partial(write_report, folder.root, self._records(engine), summary)
            _best_effort(folder.layout.report, report, None)
        if self.destination.remote:
            format, finished = self.manifest.settings.format, result.counts.finished_now
            failed = await anyio.to_thread.run_sync(
                _publish, folder, self.destination, format, finished
            )
            if failed:  # the run is not whole at --out: not a success
                url = self.destination.url
                missing = f"{', '.join(failed)} not yet at {url}: the next run puts them"
                result.stopped = f"{result.stopped}; {missing}" if result.stopped else missing
        return result

    def _metadata(self, engine: Engine) -> None:
        rows = metadata_rows(self.folder.root, self._records(engine), self.writer.var_names)
        self.folder.write_metadata(rows)

    def _records(self, engine: Engine) -> Iterator[ResultRecord]:
        """Every finished job of the folder: this manifest's in its order, then any other's
        (an --append, an edited manifest), since the card counts them all."""
        states = engine.states
        ours = [states[key].done_at for key in engine.keys if key in states]
        mine = set(engine.keys)
        others = sorted(
            s.done_at for k, s in states.items() if k not in mine and s.done_at is not None
        )
        offsets = [o for o in ours if o is not None] + others
        return records_at(self.folder.journal_path, offsets)

    def _summary(self, ran: Ran, started: float, ended: float) -> dict[str, Any]:
        engine, result = ran.engine, ran.result
        states = engine.states
        written = sum(1 for key in engine.keys if key in states and states[key].done_at is not None)
        requests = sum((api.requests_by for api in ran.apis), Counter[str]())
        stats = stats_of(result.counts, started, ended, requests=requests)
        data = _run_summary(self.manifest, self.out, result, self.base_url, stats, written)
        held = folder_counts(engine.ledger)
        data["folder"] = {  # the whole folder, over every run (status says the same)
            "jobs": held.total,
            "completed": held.completed,
            "failed": held.failed,
            "ambiguous": held.ambiguous_jobs,
            "spend_usd": round(held.spend_usd, 4),
            "spend_units": round(held.spend_units, 3),
        }
        listing = engine.listing_stats()
        if listing is not None:
            data["listing"] = dataclasses.asdict(listing)
        if ran.receiver is not None:
            data["webhooks"] = ran.receiver.counts.to_json()
        return data

    def _card(self, result: RunResult) -> None:
        completed = result.summary["folder"]["completed"]
        models = sorted(result.counts.by_model)
        card = dataset_card(
            self.manifest.settings.format,
            completed,
            models,
            result.summary,
            var_names=self.writer.var_names,
        )
        card_path = self.folder.layout.card
        _best_effort(card_path, lambda: write_card(card_path, card), None)


def _publish(
    folder: OutputFolder, destination: Destination, format: str, finished: int
) -> list[str]:
    """Put the run's own files at a remote destination, whole; returns the names of those it
    could not put. A run that finished nothing puts nothing there that is there already,
    unless an earlier run could not put them all (a mark in the state folder says so)."""
    layout = folder.layout
    files = [layout.results, layout.summary, layout.card, layout.identity]
    if format == "files":
        files.append(layout.metadata)
    unfinished = folder.state / "unpublished"
    everything = bool(finished) or unfinished.exists()
    try:
        held = destination.listing("") if not everything else set()
    except OSError as exc:
        log.warning(
            "could not list %s: %s; the next run puts its files there", destination.url, exc
        )
        return [path.name for path in files if path.exists()]
    unfinished.touch()
    failed = []
    for path in files:
        if path.exists() and (everything or path.name not in held):
            try:
                destination.put(path, path.name)
            except OSError as exc:
                log.warning("could not put %s at %s: %s", path.name, destination.url, exc)
                failed.append(path.name)
    if not failed:
        unfinished.unlink(missing_ok=True)
    return failed


def _up_to_date(folder: OutputFolder, finished_now: int) -> bool:
    """Whether metadata.jsonl and report.html already say all there is: this
    run finished nothing, and they were written after the journal's last event (a run that
    stopped before its finishing stage leaves the journal newer)."""
    files = (folder.layout.metadata, folder.layout.report)
    if finished_now or not all(path.exists() for path in files):
        return False
    journal = folder.journal_path.stat().st_mtime_ns if folder.journal_path.exists() else 0
    return all(path.stat().st_mtime_ns >= journal for path in files)


def _best_effort(path: Path, write: Callable[[], T], default: T) -> T:
    """``write()``, or ``default`` with a warning: the outcomes are safe in the journal."""
    try:
        return write()
    except Exception as exc:  # the jobs' outcomes are safe in the journal whatever this says
        log.warning("could not write %s: %s; the next run writes it again", path, exc)
        return default


def _run_summary(
    manifest: Manifest,
    out: str,
    result: RunResult,
    api_base: str,
    stats: RunStats,
    records: int,
) -> dict[str, Any]:
    settings = manifest.settings
    return summary(
        out=out,
        stats=stats,
        records=records,
        exit_code=result.exit_code,
        stopped=result.stopped,
        manifest=manifest.file,
        api_base=api_base,
        settings={
            "concurrency": settings.concurrency,
            "submit_concurrency": settings.submit_concurrency,
            "rate_limit_per_s": settings.rate_limit,
            "poll_interval_s": settings.poll_interval,
            "poll_mode": settings.poll_mode,
            "max_attempts": settings.max_attempts,
            "job_timeout_s": settings.job_timeout,
        },
    )
