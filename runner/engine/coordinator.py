"""What the processes of a split share through a coordinator: each key's slots, its request
rate and the budget (``--coordinator``; runner.coordination.redis is the one there is).

Without a coordinator (``None`` wherever one is taken) a run is as it always was: its gate
probes the account's cap alone (``AdaptiveLimit``), its client paces itself and its budget is
its own (``Budget``). A split without one divides them (``runner.batch.shard_share``).

With one, every process of a run leases what it uses from it:

- a slot of the key for each job it sends, before its POST and until the job has left the
  server (``SlotShare.take`` / ``give_back``); a job already running when a process starts
  (a resumed one) is counted whatever the cap (``hold``). Leases expire unless their holder
  renews them, so a process that dies gives its slots back by itself;
- the key's concurrency limit, cut for every process when one of them is told the account
  runs too many jobs, and raised slowly back by every accepted submit (AIMD, shared);
- a token of the key's request rate for each request (``rate``);
- the price of each job from one budget, before its POST (``budget``).

A coordinator that cannot be reached any more is *lost*: nothing more is sent (a job that
cannot lease, or reserve, is left for a later run), jobs in flight are followed to their end
at the shard's share of the request rate, and the run stops with exit 3. Nothing it does
comes after a POST, so no path through it sends a job twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runner.engine.budget import Budget
    from runner.outputs.identity import ManifestId


class NotLeased(Exception):
    """A job gets no slot or no share of the budget: it is not sent in this run."""


class CoordinatorLost(NotLeased):
    """The coordinator cannot be reached: nothing more is sent in this run."""


class Acquirable(Protocol):
    """A request rate: ``acquire`` returns when a request may go."""

    async def acquire(self) -> None: ...


class SlotShare(Protocol):
    """One key's slots, as leased from a coordinator by this process."""

    async def take(self) -> str:
        """A lease for one job, once the key's shared limit has room for it (the process's
        waiting jobs are served in turn); CoordinatorLost when it cannot be asked, NotLeased
        when the run stops while the job waits."""
        ...

    def give_back(self, lease: str) -> None:
        """The job left the server: its slot is free (sent on soon, never awaited)."""
        ...

    def hold(self) -> str:
        """A lease for a job already running at the server, whatever the limit."""
        ...

    def overloaded(self) -> None:
        """The API said the account runs too many jobs: cut the shared limit."""
        ...

    def accepted(self) -> None:
        """A submit went through: raise the shared limit a little."""
        ...


class Coordinator(Protocol):
    """What the processes of a run share (module docstring)."""

    @property
    def lost(self) -> str | None:
        """Why the coordinator is lost (None: it is not)."""
        ...

    async def wait_lost(self) -> str:
        """Return, with the reason, once the coordinator is lost."""
        ...

    async def keep_up(self) -> None:
        """For the run's length: renew this process's leases, and send on what it gave back
        (returns when the coordinator is lost)."""
        ...

    def slots(self, account: str, ceiling: int, stopping: Callable[[], bool]) -> SlotShare:
        """The slots of the key with fingerprint ``account``, at most ``ceiling`` at once;
        ``stopping`` says when the run stops submitting (a job waiting for a slot then gives
        up: other processes may hold the account for long)."""
        ...

    def rate(self, account: str, per_second: float, alone: float) -> Acquirable:
        """The key's request rate, ``per_second`` over every process; ``alone``: this
        process's pace once the coordinator is lost."""
        ...

    def budget(self, run: str, folder: str, limit: float | None, unit: str) -> Budget:
        """The budget of the run ``run`` (its manifest and split), whose jobs this process
        writes into ``folder``; ``limit`` in ``unit`` over every process of the run."""
        ...


def run_name(manifest: ManifestId, shards: int | None, unit: str) -> str:
    """A run's name at a coordinator: its manifest (its text, else its file name), its split
    and its budget's unit, hashed (what the processes of a run have in common, and only they)."""
    what = f"{manifest.sha256 or manifest.name}\n{shards or 1}\n{unit}"
    return hashlib.sha256(what.encode()).hexdigest()[:16]
