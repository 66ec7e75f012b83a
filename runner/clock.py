"""The clock every part reads time from, sleeps on and times out by; tests give a virtual one.

Whatever waits or measures takes a ``Clock``: nothing asks which clock it was given (a
virtual clock in tests is the clock, as trio's are), so the code under test is the code that
runs.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

import anyio


class Clock(Protocol):
    """Where time is read, slept on and bounded."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch: compared with the server's timestamps."""
        ...

    def monotonic(self) -> float:
        """Seconds for durations and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that this clock cancels ``seconds`` from now, for a ``with``."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        return anyio.move_on_after(seconds)
