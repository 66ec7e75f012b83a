"""How a run stops: on a signal (drain, then abort on the second or after the drain timeout), at
its deadline, when the API refuses every job (401, 402), or at once when the disk fails."""

from __future__ import annotations

import logging
import shutil
import signal
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from runner.engine.coordinator import Coordinator
from runner.engine.retry import Clock
from runner.errors import DiskError, FatalApiError

log = logging.getLogger("runner.engine.engine")


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB"
    except OSError:
        return "unknown space"


class Stopper:
    """Why the run stops, if it does, and the scopes a stop cancels."""

    def __init__(self, clock: Clock, drain_timeout: float, root: Path) -> None:
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.root = root  # the output folder, whose free space a full disk reports
        self.reason: str | None = None  # set once the run stops submitting
        self.interrupted = False
        self.fatal: FatalApiError | None = None
        self.advice: str | None = None  # what would help, when the run stops for a cause
        self.disk_error: DiskError | None = None
        self.work: anyio.CancelScope | None = None  # the workers' scope: abort cancels it
        self.follows: set[anyio.CancelScope] = set()  # --cancel-on-exit: jobs being followed

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def stop(self, reason: str) -> None:
        """Stop submitting; jobs in flight finish (within the drain timeout)."""
        if self.reason is None:
            self.reason = reason
            log.warning(
                "stopping (%s): no new submits; waiting up to %g s for jobs in flight",
                reason,
                self.drain_timeout,
            )
            for scope in self.follows:
                scope.cancel()  # --cancel-on-exit: cancel what runs rather than wait for it

    def stop_quietly(self, reason: str) -> None:
        """Stop submitting when nothing runs: no drain to announce."""
        if self.reason is None:
            self.reason = reason

    def stop_for_disk(self, exc: DiskError) -> None:
        """Nothing more can be recorded: stop at once. What was not recorded is resumed."""
        if self.disk_error is None:
            self.disk_error = exc
            free = f" ({_free_space(self.root)} free)" if exc.full else ""
            log.error("%s%s: stopping now; %s", exc, free, exc.advice())
            self.stop(f"{exc}{free}; {exc.advice()}")
        self.abort()

    def abort(self) -> None:
        """Stop at once; the output folder resumes correctly on the next run."""
        if self.work is not None:
            self.work.cancel()

    async def watch_signals(self, helpers: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.reason is None:
                    self.interrupted = True
                    self.stop(f"interrupted by {signal.Signals(signum).name}")
                    helpers.start_soon(self._abort_after_drain)
                else:
                    log.warning("second signal: stopping now")
                    self.abort()
                    return

    async def stop_at_deadline(self, helpers: TaskGroup, deadline: float, flag: str) -> None:
        """At ``deadline`` (epoch seconds, set by ``flag``), stop submitting and drain."""
        await self.clock.sleep(max(0.0, deadline - self.clock.time()))
        if self.reason is None:
            self.stop(f"{flag} reached")
            helpers.start_soon(self._abort_after_drain)

    async def _abort_after_drain(self) -> None:
        await self.clock.sleep(self.drain_timeout)
        log.warning("drain timeout reached: stopping now")
        self.abort()

    async def stop_when_lost(self, coordinator: Coordinator) -> None:
        """No new submit once the coordinator is lost: jobs in flight finish, a later run
        sends the rest."""
        reason = await coordinator.wait_lost()
        self.stop(f"the coordinator is lost ({reason}): run the same command again once it is back")
