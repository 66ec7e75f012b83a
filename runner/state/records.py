"""The results record of a job: its type, how it is written, and how it is read back.

results.jsonl holds one per line and the journal's `done` event carries one. This module is
the only place that knows their keys: the engine builds records here, and the report, the
metadata, merge, status and the journal read them through ``parse_record`` and the small
accessors below, so a record read from disk is always the shape the type says.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from runner import jsontext
from runner.files import bounded_lines, open_regular
from runner.timefmt import iso_time

if TYPE_CHECKING:
    from runner.api.remote import RemoteJob
    from runner.jobspec import JobSpec


class KeyState(Protocol):
    """What a record takes from the journal's state of its job (runner.state.journal.KeyState)."""

    @property
    def attempts(self) -> int: ...

    @property
    def submitted_at(self) -> float | None: ...

    @property
    def job_id(self) -> str | None: ...


log = logging.getLogger(__name__)

MAX_LINE = 16 << 20  # a results line longer than this is no record of ours


class RecordStatus(StrEnum):
    """How a job ended, as results.jsonl and the journal write it."""

    COMPLETED = "completed"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"  # its answer was lost and no listing could tell which job it made


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One image of a job, relative to the output folder; sha256 and size of the final file."""

    path: str
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


class Timings(TypedDict, total=False):
    submitted_at: str | None
    created_at: str | None
    completed_at: str | None
    noticed_at: str | None  # when the run learnt that the job had ended
    seconds: float | None  # created → completed, by the server's clock


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """A job's outcome: the spec as sent (JobSpec.describe) and what became of it. Written by
    ``to_json`` and read by ``parse_record``, its one encoder and decoder."""

    key: str
    index: int
    entry: int
    name: str | None
    model: str
    endpoint: str
    prompt: str
    seed: int | None
    params: dict[str, Any]
    vars: dict[str, Any]
    replica: int
    job_id: str | None
    attempts: int
    status: RecordStatus
    files: tuple[FileEntry, ...]
    error: str | None
    timings: Timings
    cost_units: float | None  # the catalog's estimate; None where no price is published
    cost_usd: float | None  # where Krea publishes a USD price
    candidates: tuple[str, ...]  # an ambiguous job's possible remote jobs

    def to_json(self) -> dict[str, Any]:
        """The record as results.jsonl and the journal write it (its key first)."""
        return {
            "key": self.key,
            "index": self.index,
            "entry": self.entry,
            "name": self.name,
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "seed": self.seed,
            "params": self.params,
            "vars": self.vars,
            "replica": self.replica,
            "job_id": self.job_id,
            "attempts": self.attempts,
            "status": self.status.value,
            "files": [entry.to_json() for entry in self.files],
            "error": self.error,
            "timings": dict(self.timings),
            "cost_units": self.cost_units,
            "cost_usd": self.cost_usd,
            "candidates": list(self.candidates),
        }

    def with_files(self, files: Iterable[FileEntry]) -> ResultRecord:
        """The same record with its files elsewhere (a shard member, a merged folder)."""
        return replace(self, files=tuple(files))


def _record(
    spec: JobSpec,
    state: KeyState,
    status: RecordStatus,
    *,
    job_id: str | None,
    files: Sequence[FileEntry],
    error: str | None = None,
    timings: Timings | None = None,
    cost_units: float | None = 0.0,
    cost_usd: float | None = None,
    candidates: tuple[str, ...] = (),
) -> ResultRecord:
    return ResultRecord(
        **spec.describe(),
        job_id=job_id,
        attempts=state.attempts,
        status=status,
        files=tuple(files),
        error=error,
        timings=timings or {"submitted_at": iso_time(state.submitted_at)},
        cost_units=cost_units,
        cost_usd=cost_usd,
        candidates=tuple(candidates),
    )


def completed_record(
    spec: JobSpec,
    state: KeyState,
    remote: RemoteJob,
    files: list[FileEntry],
    noticed_at: float | None = None,
) -> ResultRecord:
    """A finished job with its files; cost is the catalog's estimate.

    ``noticed_at``: when the run learnt that the job had ended, so its downloads began."""
    seconds = None
    if remote.created_at is not None and remote.completed_at is not None:
        seconds = round(remote.completed_at - remote.created_at, 3)
    timings: Timings = {
        "submitted_at": iso_time(state.submitted_at),
        "created_at": iso_time(remote.created_at),
        "completed_at": iso_time(remote.completed_at),
        "noticed_at": iso_time(noticed_at),
        "seconds": seconds,
    }
    return _record(
        spec,
        state,
        RecordStatus.COMPLETED,
        job_id=remote.job_id,
        files=files,
        timings=timings,
        cost_units=spec.units,
        cost_usd=spec.usd,
    )


def ambiguous_record(
    spec: JobSpec,
    state: KeyState,
    candidates: tuple[str, ...],
    files: list[FileEntry],
    why: str,
) -> ResultRecord:
    """A job whose submit's answer was lost and could not be told apart from other jobs.

    It was not sent again (that could pay twice); the candidates' images, paid for, are kept
    under images/_unmatched/ and listed in ``files``. Its cost is the job's price, what
    sending it again costs (``spend_of`` counts none of it).
    """
    return _record(
        spec,
        state,
        RecordStatus.AMBIGUOUS,
        job_id=None,
        files=files,
        error=(
            f"a submit's answer was lost ({why}); {len(candidates)} remote job(s) could be it "
            f"({', '.join(candidates) or 'none listed'}); not sent again, to never pay twice "
            "(--retry-ambiguous sends it again after saying what that may cost)"
        ),
        cost_units=spec.units,
        cost_usd=spec.usd,
        candidates=candidates,
    )


def failed_record(spec: JobSpec, state: KeyState, reason: str) -> ResultRecord:
    """A job that ended without images; failed jobs are not billed."""
    return _record(spec, state, RecordStatus.FAILED, job_id=state.job_id, files=[], error=reason)


def record_line(record: ResultRecord) -> str:
    """The record as one line of results.jsonl."""
    return json.dumps(record.to_json(), ensure_ascii=False) + "\n"


# Reading. Records come back from files a person, an older version or a crash may have
# touched: whatever is missing or of the wrong type takes its default, and a line without a
# key is not a record at all.


RecordLike = ResultRecord | Mapping[str, Any]  # a journal's done line keeps its raw record


def status_of(raw: RecordLike) -> RecordStatus:
    """A record's status; one this version does not know is read as failed (never paid)."""
    if isinstance(raw, ResultRecord):
        return raw.status
    try:
        return RecordStatus(str(raw.get("status")))
    except ValueError:
        return RecordStatus.FAILED


def model_of(raw: RecordLike) -> str:
    """A record's model id, as written."""
    return raw.model if isinstance(raw, ResultRecord) else str(raw.get("model"))


def error_of(raw: RecordLike) -> str | None:
    """A record's error, if it has one."""
    error = raw.error if isinstance(raw, ResultRecord) else raw.get("error")
    return None if error is None else str(error)


def spend_of(record: RecordLike) -> tuple[float, float]:
    """(US dollars, compute units) a record cost: its USD price where it has one, else units;
    nothing unless it completed."""
    if status_of(record) != RecordStatus.COMPLETED:
        return 0.0, 0.0
    if isinstance(record, ResultRecord):
        record = {"cost_usd": record.cost_usd, "cost_units": record.cost_units}
    usd = record.get("cost_usd")
    if isinstance(usd, int | float):
        return float(usd), 0.0
    units = record.get("cost_units")
    return 0.0, float(units) if isinstance(units, int | float) else 0.0


def price_of(record: ResultRecord) -> tuple[float | None, float | None]:
    """(US dollars, compute units) one send of the record's job costs, as it says; None where
    it does not (older ambiguous records say 0: they were written without the price)."""
    return record.cost_usd or None, record.cost_units or None


def _of(value: Any, kind: type | tuple[type, ...], default: Any) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _file(raw: Any) -> FileEntry | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        return None
    return FileEntry(raw["path"], str(raw.get("sha256", "")), _of(raw.get("bytes"), int, 0))


def _timings(raw: Any) -> Timings:
    if not isinstance(raw, dict):
        return {}
    timings: Timings = {}
    for name in ("submitted_at", "created_at", "completed_at", "noticed_at"):
        if name in raw:
            timings[name] = _of(raw[name], str, None)
    if "seconds" in raw:
        timings["seconds"] = _of(raw["seconds"], (int, float), None)
    return timings


def parse_record(raw: Any) -> ResultRecord | None:
    """The record in a decoded JSON value, in its full shape; None if it is not one (no key,
    no list of files, or a file without a path: its images could not be found)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        return None
    raw_files = raw.get("files")
    if not isinstance(raw_files, list):
        return None
    files = [_file(entry) for entry in raw_files]
    if any(entry is None for entry in files):
        return None
    get = raw.get
    return ResultRecord(
        key=raw["key"],
        index=_of(get("index"), int, 0),
        entry=_of(get("entry"), int, 0),
        name=_of(get("name"), str, None),
        model=str(get("model", "")),
        endpoint=str(get("endpoint", "")),
        prompt=str(get("prompt", "")),
        seed=_of(get("seed"), int, None),
        params=_of(get("params"), dict, {}),
        vars=_of(get("vars"), dict, {}),
        replica=_of(get("replica"), int, 0),
        job_id=_of(get("job_id"), str, None),
        attempts=_of(get("attempts"), int, 0),
        status=status_of(raw),
        files=tuple(entry for entry in files if entry is not None),
        error=None if get("error") is None else str(get("error")),
        timings=_timings(get("timings")),
        cost_units=_of(get("cost_units"), (int, float), None),
        cost_usd=_of(get("cost_usd"), (int, float), None),
        candidates=tuple(str(c) for c in _of(get("candidates"), list, [])),
    )


def parse_lines(lines: Iterable[bytes | None], source: str) -> Iterator[ResultRecord]:
    """The records among JSON lines; lines that are not one (torn by a crash, not JSON, not
    UTF-8, not a record, None for one too long to read) are skipped, and counted in one
    warning naming ``source``."""
    skipped = 0
    for line in lines:
        if line is None:
            skipped += 1
            continue
        if not line.strip():
            continue
        try:
            record = parse_record(jsontext.loads(line))
        except ValueError:
            record = None
        if record is None:
            skipped += 1
        else:
            yield record
    if skipped:
        log.warning("%s: %d line(s) skipped that are not a results record", source, skipped)


def read_records(path: Path) -> Iterator[ResultRecord]:
    """Every record of a results.jsonl, in order (a job may appear more than once)."""
    if not path.exists() and not path.is_symlink():
        return
    with open_regular(path, follow=False) as handle:
        yield from parse_lines((line for line, _ in bounded_lines(handle, MAX_LINE)), str(path))


def iter_latest_records(path: Path) -> Iterator[ResultRecord]:
    """The current record of each job in a results.jsonl, streamed: the file is read twice
    and a line number per job is all that is held (a million-job gallery, not a million
    records in memory)."""
    last: dict[str, int] = {}
    for number, record in enumerate(read_records(path)):
        last[record.key] = number
    for number, record in enumerate(read_records(path)):
        if last.get(record.key) == number:
            yield record


def latest_records(path: Path) -> list[ResultRecord]:
    """The current record of each job in a results.jsonl (the last one wins)."""
    latest: dict[str, ResultRecord] = {}
    for record in read_records(path):
        latest[record.key] = record
    return list(latest.values())
