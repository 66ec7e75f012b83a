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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.outputs.atomic import fsync_dir
from runner.outputs.destination import Destination
from runner.outputs.folder import OutputFolder
from runner.outputs.images import image_extension, image_size
from runner.outputs.layout import relative
from runner.outputs.records import FileEntry, RecordStatus, ResultRecord
from runner.outputs.schema import job_fields, requested_size, row
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.writers.base import Fetched, RecordSource, Writer, checked

log = logging.getLogger(__name__)

STAGING_DIR = "staging"
UNMATCHED = "_unmatched/"  # the candidates' images of ambiguous jobs stay loose files


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of a finished job, as a shard holds it."""

    shard: str  # "shards/00003.tar"
    key: str  # the member's stem: the job key, then KEY-1, KEY-2 for further images
    ext: str  # ".png", ".jpg", ".webp"
    staged: Path
    job: Mapping[str, Any]  # what the record says of the job (runner.outputs.schema.job_fields)

    @property
    def member(self) -> str:
        return self.key + self.ext

    def row(self, image: bytes, var_names: Sequence[str]) -> dict[str, Any]:
        """The sample's row of the one schema, its size read from the image's header."""
        size = image_size(image) or requested_size(self.job.get("params") or {})
        return row(self.job, f"{self.shard}#{self.member}", size, var_names)


class ShardWriter(Writer):
    """The staging, numbering and recovery every shard format shares; a format writes one
    whole shard file (``write_shard``)."""

    suffix = ""

    def __init__(
        self,
        folder: OutputFolder,
        shard_size: int = 10_000,
        destination: Destination | None = None,
    ) -> None:
        super().__init__(folder, destination)
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

    # ---- before the run -----------------------------------------------------------------

    def open(
        self,
        finished: Callable[[], tuple[int, int]],
        records: RecordSource,
        journal_size: int | None = None,
    ) -> None:
        super().open(finished, records, journal_size)
        self.shards.mkdir(exist_ok=True)
        self.staging.mkdir(exist_ok=True)
        for part in [*self.staging.glob(".*.part"), *self.shards.glob(".*.part")]:
            part.unlink(missing_ok=True)
        for local in sorted(self.shards.iterdir()):
            if self.destination.remote and self._number(local.name) >= 0:
                self._upload(local)  # written before a crash, not uploaded yet
        names = {p.name for p in self.shards.iterdir()} | self.remote_shards()
        written = [n for n in (self._number(name) for name in names) if n >= 0]
        self._open_number = max(written, default=-1) + 1
        if any(self.staging.iterdir()):
            self._recover(records, set(written))

    def _number(self, name: str) -> int:
        match = re.fullmatch(r"(\d{5,})" + re.escape(self.suffix), name)
        return int(match.group(1)) if match else -1

    def _recover(self, records: RecordSource, written: set[int]) -> None:
        """An earlier run stopped with samples staged: sort them into their shards (from the
        journal's records), write the shards that are full or left behind, drop the rest."""
        kept: set[Path] = set()
        for record in records():
            for sample in self._samples(record):
                number = self._number(Path(sample.shard).name)
                if number in written:
                    continue  # in a shard already: its staged copy is a leftover
                self._members.setdefault(number, []).append(sample)
                kept.add(sample.staged)
        for stray in self.staging.iterdir():
            if stray not in kept:
                stray.unlink(missing_ok=True)  # placed, but its job never finished
        if self._members:
            last = max(self._members)
            self._open_number = max(self._open_number, last)
            for number in sorted(self._members):
                if number < last or len(self._members[number]) >= self.shard_size:
                    self._write(number, now=True)
            self._given[self._open_number] = len(self._members.get(self._open_number, []))

    # ---- during the run -------------------------------------------------------------------

    def partial_path(self, name: str) -> Path:
        return self.staging / f".{name.replace('/', '_')}.part"

    def place(self, fetched: Fetched, stem: str, provenance: Mapping[str, Any] | None) -> FileEntry:
        sha256, size = checked(fetched, provenance)
        ext = image_extension(fetched.content_type, fetched.url)
        if stem.startswith(UNMATCHED):
            final = self.folder.place(fetched.path, stem + ext)
        else:
            final = self.staging / (fetched.path.name[1 : -len(".part")] + ext)
            os.replace(fetched.path, final)
            fsync_dir(final.parent)
        return {"path": relative(final, self.folder.root), "sha256": sha256, "bytes": size}

    def assign(self, record: ResultRecord) -> ResultRecord:
        if record["status"] != RecordStatus.COMPLETED or not record["files"]:
            return record
        if self._given.get(self._open_number, 0) >= self.shard_size:
            self._open_number += 1
        given = self._given.get(self._open_number, 0)
        self._given[self._open_number] = given + len(record["files"])  # a job's images together
        shard = f"{SHARDS_DIR}/{self._open_number:05d}{self.suffix}"
        files = [
            {**entry, "path": f"{shard}#{Path(entry['path']).name}"} for entry in record["files"]
        ]
        return {**record, "files": files}  # type: ignore[typeddict-item]

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
        for entry in record["files"]:
            place = member_of(entry["path"])
            if place is None:
                continue
            shard, member = place
            stem, dot, ext = member.rpartition(".")
            samples.append(
                Sample(shard, stem, dot + ext, self.staging / member, job_fields(record))
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
        place = member_of(entry["path"])
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
        self.write_shard(hidden, samples)
        with open(hidden, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(hidden, final)
        fsync_dir(self.shards)
        if self.destination.remote:
            self._upload(final)
        for sample in samples:
            sample.staged.unlink(missing_ok=True)
        log.info("shard %s written: %d samples", relative(final, self.folder.root), len(samples))

    def _upload(self, local: Path) -> None:
        """Put a whole shard at the destination, then drop the local copy."""
        self.destination.put(local, f"{SHARDS_DIR}/{local.name}")
        local.unlink()

    @abstractmethod
    def write_shard(self, path: Path, samples: list[Sample]) -> None:
        """Write one whole shard file at ``path`` (the caller fsyncs and renames it)."""

    def close(self, records: RecordSource, complete: bool, journal_size: int | None = None) -> None:
        """A run with nothing left writes its last shard however full; one that stopped early
        leaves it staged for the next run to fill."""
        try:
            if complete:
                for number in sorted(self._members):
                    self._write(number)
            self._pool.shutdown(wait=True)
            for future in self._pending:
                future.result()  # an error here leaves the samples staged: the next run writes
        finally:
            self._pending.clear()
            super().close(records, complete, journal_size)


def iter_samples(samples: list[Sample]) -> Iterator[tuple[Sample, bytes]]:
    """Each sample with its image's bytes, read from staging one at a time."""
    for sample in samples:
        yield sample, sample.staged.read_bytes()
