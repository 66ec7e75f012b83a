"""The run's output: the writer opened against the journal before the first job, closed
after the last, and a folder without a journal (or with torn lines) mended from its results."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import anyio

from runner.errors import DiskError, UsageError
from runner.outputs import OutputFolder, intact_records
from runner.outputs.layout import Layout
from runner.outputs.results_log import key_digest
from runner.outputs.writers import Writer
from runner.state.events import Done, Refetch
from runner.state.figures import Counts
from runner.state.journal import Journal, records_at
from runner.state.ledger import KeyState
from runner.state.records import RecordStatus, ResultRecord, read_records

log = logging.getLogger("runner.engine.engine")


class OutputKeeper:
    """The writer of a run's folder, kept in step with its journal."""

    def __init__(self, folder: OutputFolder, writer: Writer, journal: Journal) -> None:
        self.folder = folder
        self.writer = writer
        self.journal = journal

    @property
    def states(self) -> dict[str, KeyState]:
        return self.journal.ledger.states

    @property
    def counts(self) -> Counts:
        return self.journal.ledger.counts

    def finished_records(self) -> Iterator[ResultRecord]:
        """The current record of every finished job, in the order they finished (from the
        journal, read one line at a time)."""
        offsets = sorted(s.done_at for s in self.states.values() if s.done_at is not None)
        return records_at(self.folder.journal_path, offsets)

    def _finished_digest(self) -> tuple[int, int]:
        return key_digest(k for k, s in self.states.items() if s.done_at is not None)

    def _journal_size(self) -> int | None:
        try:
            return self.folder.journal_path.stat().st_size
        except OSError:
            return None

    async def open(self) -> None:
        open_writer = functools.partial(
            self.writer.open, self._finished_digest, self.finished_records, self._journal_size()
        )
        try:
            await anyio.to_thread.run_sync(open_writer)
        except OSError as exc:
            raise DiskError(str(self.folder.root), exc) from exc

    async def check(self) -> None:
        """Before the survey: the jobs whose images the output lost are fetched again from
        their remote jobs (journaled first: never a new submit)."""
        try:
            completed = sum(1 for s in self.states.values() if s.done == RecordStatus.COMPLETED)
            check = functools.partial(self.writer.check, self.finished_records, completed)
            lost = await anyio.to_thread.run_sync(check)
        except OSError as exc:
            raise DiskError(str(self.folder.root), exc) from exc
        await self._refetch([(r.key, r.job_id) for r in lost if r.job_id], "its image was lost")

    async def _refetch(self, jobs: list[tuple[str, str]], why: str) -> None:
        if not jobs:
            return
        await self.journal.record_many(Refetch(key, job_id, why) for key, job_id in jobs)
        log.warning(
            "%d finished job(s) lost their images from the output (%s): fetched again from "
            "their jobs, never submitted again",
            len(jobs),
            ", ".join(key for key, _ in jobs[:5]) + (", …" if len(jobs) > 5 else ""),
        )

    async def close(self) -> None:
        """Close the writer (shielded: it runs as a cancelled run ends); a failure is a warning,
        since every outcome is in the journal and the next run writes it again."""
        complete = self.counts.unfinished == 0
        with anyio.CancelScope(shield=True):
            try:
                close = functools.partial(
                    self.writer.close, self.finished_records, complete, self._journal_size()
                )
                await anyio.to_thread.run_sync(close)
            except OSError as exc:
                log.warning("could not finish the output (%s); the next run does", exc)
            try:
                await self._refetch(self.writer.lost_jobs(), "its staged image was lost")
            except DiskError as exc:
                log.warning("%s; the next run checks the output again", exc)

    async def adopt_results(self) -> None:
        """A journal with torn or misshapen lines may have lost a job's ``done`` line:
        results.jsonl still holds its record, and where the record's files are intact
        (sha256) the job is done, not ambiguous, and its record stays."""
        replay = self.journal.replay
        if not (replay.torn_inside or replay.misshapen):
            return  # a torn last line is a crash's: its job's record never reached results
        states, root, holds = self.states, self.folder.root, self.writer.holds

        def unjournaled() -> list[ResultRecord]:
            return [
                record
                for record in read_records(Layout(root).results)
                if record.status == RecordStatus.COMPLETED
                and (record.key not in states or states[record.key].done is None)
                and all(holds(entry) for entry in record.files)
            ]

        try:
            records = await anyio.to_thread.run_sync(unjournaled)
        except OSError as exc:
            log.warning("could not read %s to mend the journal: %s", root, exc)
            return
        if records:
            log.warning(
                "journal: %d finished job(s) had lost their line; results.jsonl and their "
                "intact images prove them done",
                len(records),
            )
            await self.journal.record_many((Done(r.key, r) for r in records), earlier=True)

    async def rebuild_from_results(self) -> None:
        """A folder without a journal (copied without its dot-files, say) still holds its
        results: every record whose images are intact is finished, and never paid again."""
        root, holds = self.folder.root, self.writer.holds
        try:
            records = await anyio.to_thread.run_sync(lambda: list(intact_records(root, holds)))
        except OSError as exc:  # a destination that cannot be listed: nothing may be sent blind
            raise UsageError(f"cannot tell what the output already holds: {exc}") from exc
        if records:
            log.warning(
                "%s has no journal: %d finished jobs recovered from results.jsonl",
                self.folder.root,
                len(records),
            )
            await self.journal.record_many((Done(r.key, r) for r in records), earlier=True)
