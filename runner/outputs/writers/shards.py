"""Shards: samples gathered into numbered files of ``shard_size`` samples each (webdataset tars,
parquet files), resumable per job rather than per shard.

A downloaded image is staged in OUT/.krea-batch/staging/ (checked, with its provenance, fsynced)
and belongs to its job as soon as the journal's ``done`` line says so: that line's record names
the shard and the member (``shards/00003.tar#KEY.png``). A shard is written from its staged
samples under a hidden name, fsynced, and renamed into place only once it is whole; then its
staged files go. After a crash the journal says which samples each unwritten shard holds, so
the next run writes the full ones, keeps filling the last, and no job is ever in two shards.
"""

from __future__ import annotations

import logging
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.outputs.atomic import fsync_dir
from runner.outputs.destination import Destination
from runner.outputs.folder import OutputFolder
from runner.outputs.images import image_extension
from runner.outputs.layout import relative
from runner.outputs.schema import job_fields
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.shard_ledger import SHARD_LEDGER, Sealed, ShardLedger
from runner.outputs.writers.base import Fetched, RecordSource, Writer, checked
from runner.outputs.writers.shard_recovery import (
    Sample,
    StagedSorting,
    intact_samples,
    not_in_place,
    seal_unknown,
    sealed_problem,
)
from runner.state.records import FileEntry, RecordStatus, ResultRecord

log = logging.getLogger(__name__)

STAGING_DIR = "staging"
UNMATCHED = "_unmatched/"  # the candidates' images of ambiguous jobs stay loose files


class ShardWriter(Writer):
    """The staging, numbering and recovery every shard format shares; a format writes one
    whole shard file (``write_shard``)."""

    suffix = ""

    def __init__(
        self,
        folder: OutputFolder,
        shard_size: int = 10_000,
        destination: Destination | None = None,
        var_names: Sequence[str] = (),
    ) -> None:
        super().__init__(folder, destination, var_names)
        self.shard_size = shard_size
        self.shards = folder.root / SHARDS_DIR
        self.staging = folder.state / STAGING_DIR
        self._open_number = 0  # the shard being filled
        self._given: dict[int, int] = {}  # samples given to each unwritten shard
        self._members: dict[int, list[Sample]] = {}  # unwritten shards' samples, finished
        # Shards are written (and uploaded) one at a time away from the event loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shards")
        self._pending: list[Future[None]] = []
        self._remote: set[str] | None = None  # the destination's shard names, once listed
        self.ledger: ShardLedger | None = None  # the sealed shards (read by ``check``)
        self._bad: dict[str, str] = {}  # shards found not as sealed → why (rebuilt by open)
        self._failed: set[str] = set()  # shards that could not be written or uploaded
        self.lost: list[Sample] = []  # staged images gone before their shard was written

    # ---- before the run -----------------------------------------------------------------

    def check(self, records: RecordSource, completed: int = 0) -> list[ResultRecord]:
        """Before the survey: every sealed shard is where it should be with its size (a stat,
        or the destination's listing), every staged image matches its record (read when
        something is amiss, or when the sealed shards hold fewer samples than the
        ``completed`` jobs). A shard that does not is rebuilt (``open``) from the members and
        staged images that still prove themselves; returns the records of the jobs whose
        images are lost, to be fetched again from their jobs."""
        self.shards.mkdir(exist_ok=True)
        self.staging.mkdir(exist_ok=True)
        for part in [*self.staging.glob(".*.part"), *self.shards.glob(".*.part")]:
            part.unlink(missing_ok=True)
        self.ledger = ShardLedger(self.folder.state / SHARD_LEDGER)
        local = {
            p.name: p.stat().st_size for p in self.shards.iterdir() if self._number(p.name) >= 0
        }
        remote = self.destination.sizes(SHARDS_DIR) if self.destination.remote else {}
        self._remote = set(remote)
        seal_unknown(self.ledger, self.shards, local, remote)
        self._bad = {
            name: why
            for name, sealed in self.ledger.sealed.items()
            if (why := sealed_problem(sealed, local, remote, self.destination.url)) is not None
        } | dict(self.ledger.damaged)
        for name, why in self._bad.items():
            log.warning(
                "shard %s/%s is not as it was sealed (%s): rebuilding it", SHARDS_DIR, name, why
            )
        sealed = sum(sealed.samples for sealed in self.ledger.sealed.values())
        if not self._bad and not any(self.staging.iterdir()) and sealed >= completed:
            return []  # every finished job's image is in a sealed shard: nothing to read
        return self._sort_staged(records)

    def _sort_staged(self, records: RecordSource) -> list[ResultRecord]:
        """Sort the staged samples (and a damaged shard's members) into the shards they are
        to be written in; what no longer proves itself is lost."""
        assert self.ledger is not None
        sorting = StagedSorting(self.shards, self.ledger, self._bad, self._number)
        for record in records():
            sorting.add(record, self._samples(record))
        self._members, lost = sorting.finish(self.staging, self._members)
        return lost

    def open(
        self,
        finished: Callable[[], tuple[int, int]],
        records: RecordSource,
        journal_size: int | None = None,
    ) -> None:
        super().open(finished, records, journal_size)
        if self.ledger is None:
            self.check(records)
        assert self.ledger is not None
        for name in self._bad:  # its good members are staged: write it anew
            (self.shards / name).unlink(missing_ok=True)
            if self._remote is not None:
                self._remote.discard(name)
        for local in sorted(self.shards.iterdir()):
            if self.destination.remote and self._number(local.name) >= 0:
                self._upload(local)  # written before a crash, not uploaded yet
        fsync_dir(self.staging)
        names = {p.name for p in self.shards.iterdir()} | self.remote_shards()
        written = {n for n in (self._number(name) for name in names) if n >= 0}
        written |= {self._number(name) for name in self.ledger.sealed}
        written -= {self._number(name) for name in self._bad}
        self._open_number = max(written | {-1}) + 1
        rebuilt = {self._number(name) for name in self._bad}
        for number in rebuilt - set(self._members):
            self._forget(number)  # nothing of it is left: its jobs are fetched again
        if self._members:
            last = max(self._members)
            self._open_number = max(self._open_number, last)
            for number in sorted(self._members):
                if (
                    number < last
                    or len(self._members[number]) >= self.shard_size
                    or (number in rebuilt)
                ):
                    self._write(number, now=True)
            self._given[self._open_number] = len(self._members.get(self._open_number, []))
        self._bad = {}

    def _forget(self, number: int) -> None:
        assert self.ledger is not None
        name = f"{number:05d}{self.suffix}"
        self.ledger.forget(name)
        if self.destination.remote:
            self.destination.remove(f"{SHARDS_DIR}/{name}")

    def _number(self, name: str) -> int:
        match = re.fullmatch(r"(\d{5,})" + re.escape(self.suffix), name)
        return int(match.group(1)) if match else -1

    # ---- during the run -------------------------------------------------------------------

    def partial_path(self, name: str) -> Path:
        return self.staging / f".{name.replace('/', '_')}.part"

    def place(self, fetched: Fetched, stem: str, provenance: Mapping[str, Any] | None) -> FileEntry:
        sha256, size = checked(fetched, provenance)
        ext = image_extension(fetched.content_type, fetched.url)
        if stem.startswith(UNMATCHED):  # paid for: kept as loose files, at the destination too
            final = self.folder.place(fetched.path, stem + ext)
            if self.destination.remote:
                path = relative(final, self.folder.root)
                self.destination.put(final, path)
                final.unlink()
                return FileEntry(path, sha256, size)
        else:
            final = self.staging / (fetched.path.name[1 : -len(".part")] + ext)
            os.replace(fetched.path, final)
            fsync_dir(final.parent)
        return FileEntry(relative(final, self.folder.root), sha256, size)

    def assign(self, record: ResultRecord) -> ResultRecord:
        if record.status != RecordStatus.COMPLETED or not record.files:
            return record
        if self._given.get(self._open_number, 0) >= self.shard_size:
            self._open_number += 1
        given = self._given.get(self._open_number, 0)
        self._given[self._open_number] = given + len(record.files)  # a job's images together
        shard = f"{SHARDS_DIR}/{self._open_number:05d}{self.suffix}"
        return record.with_files(
            replace(entry, path=f"{shard}#{Path(entry.path).name}") for entry in record.files
        )

    def finished(self, record: ResultRecord, again: bool = False) -> None:
        super().finished(record, again)
        samples = self._samples(record)
        if not samples:
            return
        number = self._number(Path(samples[0].shard).name)
        members = self._members.setdefault(number, [])
        members.extend(samples)
        given = self._given.get(number, 0)
        if given >= self.shard_size and len(members) >= given:  # full, and all of it finished
            self._write(number)

    def _samples(self, record: ResultRecord) -> list[Sample]:
        samples = []
        for entry in record.files:
            place = member_of(entry.path)
            if place is None:
                continue
            shard, member = place
            stem, dot, ext = member.rpartition(".")
            samples.append(
                Sample(
                    shard,
                    stem,
                    dot + ext,
                    self.staging / member,
                    job_fields(record),
                    entry.sha256,
                )
            )
        return samples

    # ---- writing a shard --------------------------------------------------------------------

    def remote_shards(self) -> set[str]:
        """The shard files the destination holds (listed once a run)."""
        if self._remote is None:
            self._remote = (
                self.destination.listing(SHARDS_DIR) if self.destination.remote else set()
            )
        return self._remote

    def holds(self, entry: FileEntry) -> bool:
        place = member_of(entry.path)
        if place is not None and self.destination.remote:
            # An object store holds whole uploads only: a shard listed there is whole.
            return Path(place[0]).name in self.remote_shards()
        return super().holds(entry)

    def _write(self, number: int, now: bool = False) -> None:
        """Write shard ``number`` from its finished samples: in the background, or ``now``."""
        samples = self._members.pop(number, [])
        self._given.pop(number, None)
        if number >= self._open_number:  # written: nothing more may join it
            self._open_number = number + 1
        if not samples:
            return
        if now:
            self._write_samples(number, samples)
        else:
            self._pending.append(self._pool.submit(self._write_samples, number, samples))

    def _write_samples(self, number: int, samples: list[Sample]) -> None:
        final = self.shards / f"{number:05d}{self.suffix}"
        hidden = self.shards / f".{final.name}.part"
        try:
            lost = len(self.lost)
            size, sha256 = self.write_shard(hidden, samples)
            os.replace(hidden, final)
            fsync_dir(self.shards)
            gone = {id(sample) for sample in self.lost[lost:]}
            good = [sample for sample in samples if id(sample) not in gone]
            assert self.ledger is not None
            self.ledger.seal(Sealed(final.name, size, sha256, len(good)))
            if self.destination.remote:
                self._upload(final)
        except BaseException:
            self._failed.add(final.name)
            raise
        for sample in good:
            sample.staged.unlink(missing_ok=True)
        log.info("shard %s written: %d samples", relative(final, self.folder.root), len(good))

    def intact_samples(self, samples: list[Sample]) -> Iterator[tuple[Sample, bytes]]:
        """Each sample with its image's bytes, checked against its record first: one that
        went missing or changed is left out of the shard (in ``lost``), and fetched again."""
        return intact_samples(samples, self.lost)

    def _upload(self, local: Path) -> None:
        """Put a whole shard at the destination, then drop the local copy."""
        self.destination.put(local, f"{SHARDS_DIR}/{local.name}")
        local.unlink()

    @abstractmethod
    def write_shard(self, path: Path, samples: list[Sample]) -> tuple[int, str]:
        """Write one whole shard file at ``path``, fsynced (the caller renames it); returns
        its size and sha256."""

    def close(self, records: RecordSource, complete: bool, journal_size: int | None = None) -> None:
        """A run with nothing left writes its last shard however full; one that stopped early
        leaves it staged for the next run to fill."""
        try:
            if complete:
                for number in sorted(self._members):
                    self._write(number)
            self._pool.shutdown(wait=True)
            for future in self._pending:
                problem = future.exception()  # the samples stay staged: the next run writes
                if isinstance(problem, OSError):
                    log.warning("a shard could not be written or put in place: %s", problem)
                elif problem is not None:
                    raise problem
        finally:
            self._pending.clear()
            super().close(records, complete, journal_size)
        self.unsaved = self._not_in_place()

    def lost_jobs(self) -> list[tuple[str, str]]:
        jobs = {
            str(s.job.get("key")): str(s.job.get("job_id"))
            for s in self.lost
            if s.job.get("job_id")
        }
        return sorted(jobs.items())

    def _not_in_place(self) -> list[str]:
        """The shards that are not at the destination as sealed, confirmed (a stat, or the
        destination's listing), and those that could not be written."""
        assert self.ledger is not None
        return sorted(set(not_in_place(self.ledger, self.shards, self.destination)) | self._failed)
