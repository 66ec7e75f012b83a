"""Jobs as the Krea API reports them: statuses, and parsing of the job JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """The statuses of a Krea job, in lifecycle order."""

    BACKLOGGED = "backlogged"  # waiting behind the account's concurrency limit
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    SAMPLING = "sampling"
    INTERMEDIATE_COMPLETE = "intermediate-complete"  # a preview may be present; not final
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class MalformedJob(ValueError):
    """The job JSON lacks something we need or has it in the wrong shape."""


# What a job id may look like (Krea's are UUIDs): it goes into URL paths and file names.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def job_id_of(data: Mapping[str, Any]) -> str:
    """The ``job_id`` of a job JSON; MalformedJob unless it looks like an id."""
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise MalformedJob("the job has no job_id")
    if not _JOB_ID.fullmatch(job_id):
        raise MalformedJob(f"the job id {job_id[:80]!r} does not look like an id")
    return job_id


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """What we read from one job JSON; unknown extra fields are ignored."""

    job_id: str
    status: JobStatus
    created_at: float | None
    completed_at: float | None
    urls: tuple[str, ...]
    error: str | None
    seed: int | None = None  # the seed the server drew the image from, where it says

    @classmethod
    def from_json(cls, data: Any) -> RemoteJob:
        if not isinstance(data, Mapping):
            raise MalformedJob(f"expected a job object, got {type(data).__name__}")
        job_id = job_id_of(data)
        try:
            status = JobStatus(str(data.get("status")))
        except ValueError as exc:
            raise MalformedJob(f"unknown job status {data.get('status')!r}") from exc
        raw_result = data.get("result")
        result: Mapping[str, Any] = raw_result if isinstance(raw_result, Mapping) else {}
        urls = _urls(result.get("urls"))
        return cls(
            job_id=job_id,
            status=status,
            created_at=parse_time(data.get("created_at")),
            completed_at=parse_time(data.get("completed_at")),
            urls=tuple(urls) if status == JobStatus.COMPLETED else (),
            error=_error_text(data, result),
            seed=_seed(result.get("seed", data.get("seed"))),
        )

    @classmethod
    def from_submit_answer(cls, data: Any) -> RemoteJob:
        """The answer to a POST: Krea's current examples omit ``status`` (it is then queued)."""
        if isinstance(data, Mapping) and "status" not in data:
            data = {**data, "status": JobStatus.QUEUED.value}
        return cls.from_json(data)


def _seed(value: Any) -> int | None:
    """A seed the answer names, when it is one (a whole number of 32 bits)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
        return value
    return None


def _urls(value: Any) -> tuple[str, ...]:
    """``result.urls`` in any of the shapes Krea has shown: a list of URLs, a list of
    ``{type, url}`` objects, or a map of name → URL (or → such an object)."""
    if value is None:
        return ()
    items = list(value.values()) if isinstance(value, Mapping) else value
    if not isinstance(items, list | tuple):
        raise MalformedJob("result.urls is not a list of URLs")
    urls = []
    for item in items:
        url = item.get("url") if isinstance(item, Mapping) else item
        if not isinstance(url, str) or not url:
            raise MalformedJob("result.urls holds something that is not a URL")
        urls.append(url)
    return tuple(urls)


@dataclass(frozen=True, slots=True)
class ListedJob:
    """A job as the listing shows it: what matching a lost submit needs, whatever its status.

    A status this version does not know must not hide a job: a lost POST whose job had it
    would look as if it created nothing, and be paid for again.
    """

    job_id: str
    created_at: float | None
    status: str
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # all of it

    @classmethod
    def from_json(cls, data: Any) -> ListedJob:
        if not isinstance(data, Mapping):
            raise MalformedJob(f"expected a job object, got {type(data).__name__}")
        created = parse_time(data.get("created_at"))
        return cls(job_id_of(data), created, str(data.get("status")), data)


def _error_text(data: Mapping[str, Any], result: Mapping[str, Any]) -> str | None:
    """The failure reason, wherever the API put it (result.error or a top-level error)."""
    for value in (result.get("error"), data.get("error")):
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping):
            text = value.get("message") or value.get("error") or value.get("code")
            if text:
                return str(text)
    return None


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch from an ISO 8601 text, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
