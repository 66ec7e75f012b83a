"""How a run stops: on a signal (drain, then abort on the second or after the drain timeout), at
its deadline, when the API refuses every job (401, 402), or at once when the disk fails."""

from __future__ import annotations

import logging
import shutil
import signal
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from runner.engine.options import EngineOptions
from runner.engine.retry import Clock
from runner.errors import DiskError, FatalApiError
from runner.outputs import OutputFolder

log = logging.getLogger("runner.engine.engine")


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB"
    except OSError:
        return "unknown space"


class Stopping:
    """The stopping half of the engine: what it needs of the engine is declared here."""

    options: EngineOptions
    clock: Clock
    folder: OutputFolder
    stopping: str | None
    interrupted: bool
    fatal: FatalApiError | None
    disk_error: DiskError | None
    _work_scope: anyio.CancelScope | None
    _follow_scopes: set[anyio.CancelScope]

    def stop(self, reason: str) -> None:
        """Stop submitting; jobs in flight finish (within the drain timeout)."""
        if self.stopping is None:
            self.stopping = reason
            log.warning(
                "stopping (%s): no new submits; waiting up to %g s for jobs in flight",
                reason,
                self.options.drain_timeout,
            )
            for scope in self._follow_scopes:
                scope.cancel()  # --cancel-on-exit: cancel what runs rather than wait for it

    def _stop_for_disk(self, exc: DiskError) -> None:
        """Nothing more can be recorded: stop at once. What was not recorded is resumed."""
        if self.disk_error is None:
            self.disk_error = exc
            free = f" ({_free_space(self.folder.root)} free)" if exc.full else ""
            log.error("%s%s: stopping now; %s", exc, free, exc.advice())
            self.stop(f"{exc}{free}; {exc.advice()}")
        self.abort()

    def abort(self) -> None:
        """Stop at once; the output folder resumes correctly on the next run."""
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def _watch_signals(self, helpers: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping is None:
                    self.interrupted = True
                    self.stop(f"interrupted by {signal.Signals(signum).name}")
                    helpers.start_soon(self._abort_after_drain)
                else:
                    log.warning("second signal: stopping now")
                    self.abort()
                    return

    async def _stop_at_deadline(self, helpers: TaskGroup, deadline: float) -> None:
        await self.clock.sleep(max(0.0, deadline - self.clock.time()))
        if self.stopping is None:
            self.stop("deadline reached")
            helpers.start_soon(self._abort_after_drain)

    async def _abort_after_drain(self) -> None:
        await self.clock.sleep(self.options.drain_timeout)
        log.warning("drain timeout reached: stopping now")
        self.abort()
