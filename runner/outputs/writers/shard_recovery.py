"""What a shard writer recovers from before a run: shards sealed before the ledger, staged
samples sorted back into their shards, and a damaged shard's members that still prove
themselves (pure but for reading and staging files)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.outputs.destination import Destination
from runner.outputs.images import image_size
from runner.outputs.schema import requested_size, row
from runner.outputs.shard_files import SHARDS_DIR, member_digests, read_member
from runner.outputs.shard_ledger import Sealed, ShardLedger, file_digest
from runner.state.records import ResultRecord

log = logging.getLogger("runner.outputs.writers.shards")


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


def seal_unknown(
    ledger: ShardLedger, shards: Path, local: Mapping[str, int], remote: Mapping[str, int]
) -> None:
    """Shards from before the ledger (or sealed by a torn line): taken as they are."""
    for name in sorted(set(local) | set(remote)):
        if name in ledger.sealed or name in ledger.damaged:
            continue
        if name in local:
            size, sha256 = file_digest(shards / name)
            samples = len(member_digests(shards / name))
            ledger.seal(Sealed(name, size, sha256, samples))
        else:
            ledger.seal(Sealed(name, remote[name], ""))


class StagedSorting:
    """Finished jobs' samples sorted into the shards they are to be written in, record by
    record; a job whose image no longer proves itself is lost (fetched again from its job)."""

    def __init__(
        self,
        shards: Path,
        ledger: ShardLedger,
        bad: Mapping[str, str],
        number: Callable[[str], int],
    ) -> None:
        self.shards, self.ledger, self.bad, self.number = shards, ledger, bad, number
        self.lost: dict[str, ResultRecord] = {}
        self.kept: set[Path] = set()
        self.members: dict[int, list[Sample]] = {}

    def add(self, record: ResultRecord, samples: Sequence[Sample]) -> None:
        wanted = [  # in a good shard: a staged copy is a leftover
            sample
            for sample in samples
            if Path(sample.shard).name not in self.ledger.sealed
            or Path(sample.shard).name in self.bad
        ]
        placed: list[Sample] = []
        for sample in wanted:
            name = Path(sample.shard).name
            if staged_intact(sample) or (name in self.bad and self._extract(name, sample)):
                placed.append(sample)
                self.kept.add(sample.staged)
        if len(placed) < len(wanted) and record.job_id:
            self.lost[record.key] = record
            return
        for sample in placed:
            self.members.setdefault(self.number(Path(sample.shard).name), []).append(sample)

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

    def finish(
        self, staging: Path, members: dict[int, list[Sample]]
    ) -> tuple[dict[int, list[Sample]], list[ResultRecord]]:
        """Drop what is not kept; the shards' members (added to ``members``) and the lost."""
        for stray in staging.iterdir():
            if stray not in self.kept:
                stray.unlink(missing_ok=True)  # placed, but its job never finished (or lost)
        for number, samples in self.members.items():
            members.setdefault(number, []).extend(samples)
        for samples in members.values():
            for sample in samples:
                if sample.job.get("key") in self.lost:  # another image of a lost job: back whole
                    sample.staged.unlink(missing_ok=True)
        kept = {
            number: [s for s in samples if s.job.get("key") not in self.lost]
            for number, samples in members.items()
        }
        return kept, list(self.lost.values())


def staged_intact(sample: Sample) -> bool:
    try:
        data = sample.staged.read_bytes()
    except OSError:
        return False
    return not sample.sha256 or hashlib.sha256(data).hexdigest() == sample.sha256


def sealed_problem(
    sealed: Sealed, local: Mapping[str, int], remote: Mapping[str, int], url: str
) -> str | None:
    """Why a sealed shard is not where it should be as it was sealed (None: it is)."""
    size = local.get(sealed.name, remote.get(sealed.name))
    if size is None:
        return f"missing{' at ' + url if url else ''}"
    if size != sealed.size:
        return f"{size:,} bytes where {sealed.size:,} were sealed"
    return None


def not_in_place(ledger: ShardLedger, shards: Path, destination: Destination) -> list[str]:
    """The sealed shards not at ``destination`` as sealed: a stat of each locally, the
    destination's listing with sizes at a URL (all of them when it cannot be listed)."""
    try:
        remote = destination.sizes(SHARDS_DIR) if destination.remote else {}
    except OSError as exc:
        log.warning("could not list %s/%s: %s", destination.url, SHARDS_DIR, exc)
        return sorted(ledger.sealed)
    local = {}
    if not destination.remote:
        for name in ledger.sealed:
            with contextlib.suppress(OSError):
                local[name] = (shards / name).stat().st_size
    return sorted(
        name
        for name, sealed in ledger.sealed.items()
        if sealed_problem(sealed, local, remote, "") is not None
    )


def intact_samples(samples: list[Sample], lost: list[Sample]) -> Iterator[tuple[Sample, bytes]]:
    """Each sample with its image's bytes, read from staging one at a time and checked
    against its record: one that went missing or changed goes to ``lost`` instead."""
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
        lost.append(sample)
