"""The journal's events as types, and their one serialisation.

A journal line is one event as compact JSON with one-letter keys (``e`` the kind, ``k`` the
job key, ``a`` the attempt…), as every version has written them; ``encode`` writes that shape
and ``decode`` reads it back, checking every field: a line of the wrong shape (a wrong type, a
missing field, an event this version does not know) decodes to None and is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.state.records import RecordLike, ResultRecord


@dataclass(frozen=True, slots=True)
class Submitting:
    """A POST is about to leave (written before it does), with the server's clock as known."""

    key: str
    attempt: int
    at: float
    low: float | None = None  # bounds on (server clock - ours) when it left, if measured
    high: float | None = None
    account: str | None = None  # the fingerprint of the key it goes with (older lines: none)


@dataclass(frozen=True, slots=True)
class Submitted:
    """The POST's answer: the remote job is the key's (``adopted``: found by a listing)."""

    key: str
    attempt: int
    job_id: str
    sent: float | None = None
    answered: float | None = None
    created: float | None = None  # the job's created_at, on the server's clock
    adopted: bool = False
    account: str | None = None  # the fingerprint of the key that holds the job


@dataclass(frozen=True, slots=True)
class Lost:
    """The POST certainly created nothing: refused, never sent, or proven by the listing."""

    key: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Retry:
    """The remote job failed (or was cancelled on exit): the next attempt may submit again."""

    key: str
    attempt: int = 0
    job_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class JobCancelled:
    """A remote job was cancelled and read back ``cancelled``: it is not billed. When it is
    the key's current job, the key may be sent again (``why`` says what made us cancel it:
    one of ``runner.state.events.CANCEL_REASONS``); any other is a job of ours the folder
    now knows, never anyone's candidate."""

    key: str
    attempt: int
    job_id: str
    why: str


# Why a job of ours was cancelled: it ran far past its model's usual time; the run stopped
# while it waited in the backlog; a lost answer's reconciliation (an exclusive account);
# --cancel-on-exit.
STRAGGLER, STOPPED, RECONCILED, ON_EXIT = "straggler", "stopped", "reconciled", "on exit"
CANCEL_REASONS = (STRAGGLER, STOPPED, RECONCILED, ON_EXIT)


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """An answer was lost and nothing proves which job, if any, is the key's."""

    key: str
    attempt: int = 0
    candidates: tuple[str, ...] = ()
    why: str | None = None
    kind: str = "ambiguous"  # "unresolved" in journals before 0.2


@dataclass(frozen=True, slots=True)
class Released:
    """The user chose to send an ambiguous job again (``--retry-ambiguous``)."""

    key: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Reopened:
    """The user chose to run a failed job again (``--retry-failed``)."""

    key: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The job's final record, written once its files are in place."""

    key: str
    record: RecordLike = field(default_factory=dict)  # typed, or as a journal line holds it


@dataclass(frozen=True, slots=True)
class Refetch:
    """A finished job's image was lost from the output (a shard damaged, a staged file gone):
    fetch it again from its remote job ``job_id``, never by a new submit."""

    key: str
    job_id: str
    why: str | None = None


@dataclass(frozen=True, slots=True)
class Asset:
    """A local reference image uploaded: its sha256 and the URL it was given."""

    sha256: str
    url: str


Event = (
    Submitting
    | Submitted
    | Lost
    | Retry
    | JobCancelled
    | Ambiguous
    | Released
    | Reopened
    | Done
    | Refetch
    | Asset
)


def encode(event: Event) -> dict[str, Any]:
    """The event as its journal line's JSON object."""
    match event:
        case Submitting(key, attempt, at, low, high, account):
            bounds = {} if low is None or high is None else {"lo": low, "hi": high}
            owner = {} if account is None else {"acct": account}
            return {"e": "submitting", "k": key, "a": attempt, "t": at, **bounds, **owner}
        case Submitted(key, attempt, job_id, sent, answered, created, adopted, account):
            line = {"e": "submitted", "k": key, "a": attempt, "id": job_id}
            line |= {"ts": sent, "tr": answered, "c": created}
            line |= {"acct": account} if account is not None else {}
            return line | ({"adopted": True} if adopted else {})
        case Lost(key, attempt):
            return {"e": "lost", "k": key, "a": attempt}
        case Retry(key, attempt, job_id, error):
            return {"e": "retry", "k": key, "a": attempt, "id": job_id, "error": error}
        case JobCancelled(key, attempt, job_id, why):
            return {"e": "cancelled", "k": key, "a": attempt, "id": job_id, "why": why}
        case Ambiguous(key, attempt, candidates, why, _):
            line = {"e": "ambiguous", "k": key, "a": attempt, "candidates": list(candidates)}
            return line | ({"why": why} if why is not None else {})
        case Released(key, attempt):
            return {"e": "released", "k": key, "a": attempt}
        case Reopened(key, attempt):
            return {"e": "reopened", "k": key, "a": attempt}
        case Done(key, record):
            raw = record.to_json() if isinstance(record, ResultRecord) else dict(record)
            return {"e": "done", "k": key, "record": raw}
        case Refetch(key, job_id, why):
            return {"e": "refetch", "k": key, "id": job_id, "why": why}
        case Asset(sha256, url):
            return {"e": "asset", "k": sha256, "url": url}
    raise TypeError(f"not a journal event: {event!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "k": lambda v: isinstance(v, str),
    "a": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "t": _number,
    "lo": _number,
    "hi": _number,
    "id": lambda v: v is None or (isinstance(v, str) and bool(v)),
    "ts": lambda v: v is None or _number(v),
    "tr": lambda v: v is None or _number(v),
    "c": lambda v: v is None or _number(v),
    "adopted": lambda v: isinstance(v, bool),
    "error": lambda v: v is None or isinstance(v, str),
    "candidates": _text_list,
    "why": lambda v: v is None or isinstance(v, str),
    "record": lambda v: isinstance(v, dict),
    "url": lambda v: isinstance(v, str),
    "acct": lambda v: v is None or isinstance(v, str),
}
_REQUIRED = {
    "submitting": ("k", "t"),
    "submitted": ("k", "id"),
    "lost": ("k",),
    "retry": ("k",),
    "cancelled": ("k", "id", "why"),
    "ambiguous": ("k", "candidates"),
    "unresolved": ("k", "candidates"),
    "released": ("k",),
    "reopened": ("k",),
    "done": ("k", "record"),
    "asset": ("k", "url"),
    "refetch": ("k", "id"),
}


def decode(line: Mapping[str, Any]) -> Event | None:
    """The event a journal line holds, or None when it is not one this version can apply."""
    kind = line.get("e")
    if kind == "done" and len(line) == 3:  # nine lines in ten of a long journal: the short way
        key, record = line.get("k"), line.get("record")
        return Done(key, record) if isinstance(key, str) and isinstance(record, dict) else None
    required = _REQUIRED.get(kind) if isinstance(kind, str) else None
    if required is None:
        return None
    for name in required:
        if line.get(name) is None:
            return None
    for name, value in line.items():  # a loop, not all(): replay reads 100,000 lines
        check = _CHECKS.get(name)
        if check is not None and not check(value):
            return None
    key, attempt = line["k"], line.get("a", 0)
    if kind == "submitting":
        return Submitting(
            key, attempt, float(line["t"]), line.get("lo"), line.get("hi"), line.get("acct")
        )
    if kind == "submitted":
        stamps = (line.get("ts"), line.get("tr"), line.get("c"))
        adopted = line.get("adopted", False)
        return Submitted(key, attempt, line["id"], *stamps, adopted, line.get("acct"))
    if kind == "lost":
        return Lost(key, attempt)
    if kind == "retry":
        return Retry(key, attempt, line.get("id"), line.get("error"))
    if kind == "cancelled":
        return JobCancelled(key, attempt, line["id"], line["why"])
    if kind in ("ambiguous", "unresolved"):
        return Ambiguous(key, attempt, tuple(line["candidates"]), line.get("why"), kind)
    if kind == "released":
        return Released(key, attempt)
    if kind == "reopened":
        return Reopened(key, attempt)
    if kind == "done":
        return Done(key, line["record"])
    if kind == "refetch":
        return Refetch(key, line["id"], line.get("why"))
    return Asset(key, line["url"])
