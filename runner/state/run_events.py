"""What a run notes beside its journal: events that change this run's figures and no job's
state, so they are never written down (a resumed run counts afresh).

They go through the same fold as the journal's events (``RunLedger.apply``); the engine's
parts emit them with ``Journal.note``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Planned:
    """The manifest's jobs, surveyed once before anything is sent: per model, how many there
    are and how many an earlier run brought to their outcome (skipped)."""

    by_model: Mapping[str, tuple[int, int]]  # model → (finished before, jobs)
    accounts: tuple[str, ...] = ()  # the fingerprints of a pool's keys (one key: none)
    failed_before: int = 0  # of the finished before: failed, and not sent again in this run
    ambiguous_before: int = 0  # ... ambiguous, and not released in this run


@dataclass(frozen=True, slots=True)
class Resumed:
    """A job an earlier run submitted, polled again instead of sent."""

    key: str


@dataclass(frozen=True, slots=True)
class TransientError:
    """An error worth trying again after (a 429 says which kind it is)."""

    status: int | None = None
    overload: bool = False  # "maximum number of concurrent jobs"


@dataclass(frozen=True, slots=True)
class LostAnswer:
    """A POST whose answer never came: what it created is checked against the listing."""

    key: str


@dataclass(frozen=True, slots=True)
class LostChecked:
    """What a check of lost answers found: ``resent`` created nothing, ``unchecked`` could not
    be read (the next run checks them). Adopted and ambiguous ones are journal events."""

    resent: int = 0
    unchecked: int = 0


@dataclass(frozen=True, slots=True)
class KeyRetired:
    """A key of the pool takes no more jobs (refused: 401, 402); the others carry the run."""

    account: str
    reason: str


@dataclass(frozen=True, slots=True)
class KeyInUse:
    """A key of the pool got its first job (or holds one): its figures start."""

    account: str
    place: str | None = None  # "key 2 of keys.txt"


@dataclass(frozen=True, slots=True)
class KeyCooling:
    """A key's submits keep being refused: its jobs not created go to the other keys."""

    account: str
    reason: str


@dataclass(frozen=True, slots=True)
class Downloaded:
    """An image in place."""

    bytes: int


class LeftOver(Enum):
    """Why a job this run took up ended without an outcome (the next run continues it)."""

    DEFERRED = "deferred"
    CANCELLED = "cancelled"
    OVER_BUDGET = "over_budget"
    UNPRICED = "unpriced"  # a dollar budget cannot price its model
    NOT_STARTED = "not_started"


@dataclass(frozen=True, slots=True)
class Unfinished:
    key: str
    why: LeftOver


RunEvent = (
    Planned
    | Resumed
    | TransientError
    | LostAnswer
    | LostChecked
    | KeyRetired
    | KeyInUse
    | KeyCooling
    | Downloaded
    | Unfinished
)
