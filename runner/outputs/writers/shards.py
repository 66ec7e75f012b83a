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

import contextlib
import hashlib
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
from runner.outputs.schema import job_fields, requested_size, row
from runner.outputs.shard_files import SHARDS_DIR, member_digests, member_of, read_member
from runner.outputs.shard_ledger import SHARD_LEDGER, Sealed, ShardLedger, file_digest
from runner.outputs.writers.base import Fetched, RecordSource, Writer, checked
from runner.state.records import FileEntry, RecordStatus, ResultRecord

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
    sha256: str = ""  # the image's, as its record says: checked before it goes into a shard

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
        self._seal_unknown(local, remote)
        self._bad = {
            name: why
            for name, sealed in self.ledger.sealed.items()
            if (why := _problem(sealed, local, remote, self.destination.url)) is not None
        } | dict(self.ledger.damaged)
        for name, why in self._bad.items():
            log.warning(
                "shard %s/%s is not as it was sealed (%s): rebuilding it", SHARDS_DIR, name, why
            )
        sealed = sum(sealed.samples for sealed in self.ledger.sealed.values())
        if not self._bad and not any(self.staging.iterdir()) and sealed >= completed:
            return []  # every finished job's image is in a sealed shard: nothing to read
        return self._sort_staged(records)

    def _seal_unknown(self, local: dict[str, int], remote: dict[str, int]) -> None:
        """Shards from before the ledger (or sealed by a torn line): taken as they are."""
        assert self.ledger is not None
        for name in sorted(set(local) | set(remote)):
            if name in self.ledger.sealed or name in self.ledger.damaged:
                continue
            if name in local:
                size, sha256 = file_digest(self.shards / name)
                samples = len(member_digests(self.shards / name))
                self.ledger.seal(Sealed(name, size, sha256, samples))
            else:
                self.ledger.seal(Sealed(name, remote[name], ""))

    def _sort_staged(self, records: RecordSource) -> list[ResultRecord]:
        """Sort the staged samples (and a damaged shard's members) into the shards they are
        to be written in; what no longer proves itself is lost."""
        assert self.ledger is not None
        lost: dict[str, ResultRecord] = {}
        kept: set[Path] = set()
        for record in records():
            samples = [
                sample
                for sample in self._samples(record)  # in a good shard: a staged copy is a leftover
                if Path(sample.shard).name not in self.ledger.sealed
                or Path(sample.shard).name in self._bad
            ]
            placed: list[Sample] = []
            for sample in samples:
                name = Path(sample.shard).name
                if _staged_intact(sample) or (name in self._bad and self._extract(name, sample)):
                    placed.append(sample)
                    kept.add(sample.staged)
            if len(placed) < len(samples) and record["job_id"]:
                lost[record["key"]] = record
                continue
            for sample in placed:
                self._members.setdefault(self._number(Path(sample.shard).name), []).append(sample)
        for stray in self.staging.iterdir():
            if stray not in kept:
                stray.unlink(missing_ok=True)  # placed, but its job never finished (or lost)
        for samples in self._members.values():
            for sample in samples:
                if sample.job.get("key") in lost:  # another image of a lost job: back whole
                    sample.staged.unlink(missing_ok=True)
        self._members = {
            number: [s for s in samples if s.job.get("key") not in lost]
            for number, samples in self._members.items()
        }
        return list(lost.values())

    def _extract(self, name: str, sample: Sample) -> bool:
        """Stage a damaged shard's member that still matches its record; whether it did."""
        data = read_member(self.shards / name, sample.key + sample.ext)
        if data is None or hashlib.sha256(data).hexdigest() != sample.sha256:
            return False
        with open(sample.staged, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return True

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
                return {"path": path, "sha256": sha256, "bytes": size}
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
                Sample(
                    shard,
                    stem,
                    dot + ext,
                    self.staging / member,
                    job_fields(record),
                    entry["sha256"],
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
        """Each sample with its image's bytes, read from staging one at a time and checked
        against its record first: one that went missing or changed is left out of the shard
        (in ``lost``), and its job is fetched again."""
        for sample in samples:
            try:
                data = sample.staged.read_bytes()
            except FileNotFoundError:
                data = None
            if data is not None and (
                not sample.sha256 or hashlib.sha256(data).hexdigest() == sample.sha256
            ):
                yield sample, data
                continue
            log.warning(
                "the staged image of job %s is gone or changed: it is fetched again",
                sample.job.get("key"),
            )
            self.lost.append(sample)

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
        try:
            remote = self.destination.sizes(SHARDS_DIR) if self.destination.remote else {}
        except OSError as exc:
            log.warning("could not list %s/%s: %s", self.destination.url, SHARDS_DIR, exc)
            return sorted(self.ledger.sealed) + sorted(self._failed)
        local = {}
        for name in self.ledger.sealed:
            with contextlib.suppress(OSError):
                local[name] = (self.shards / name).stat().st_size
        missing = [
            name
            for name, sealed in self.ledger.sealed.items()
            if _problem(sealed, {} if self.destination.remote else local, remote, "") is not None
        ]
        return sorted(set(missing) | self._failed)


def _staged_intact(sample: Sample) -> bool:
    try:
        data = sample.staged.read_bytes()
    except OSError:
        return False
    return not sample.sha256 or hashlib.sha256(data).hexdigest() == sample.sha256


def _problem(
    sealed: Sealed, local: Mapping[str, int], remote: Mapping[str, int], url: str
) -> str | None:
    """Why a sealed shard is not where it should be as it was sealed (None: it is)."""
    size = local.get(sealed.name, remote.get(sealed.name))
    if size is None:
        return f"missing{' at ' + url if url else ''}"
    if size != sealed.size:
        return f"{size:,} bytes where {sealed.size:,} were sealed"
    return None
