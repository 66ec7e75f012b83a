"""Pacing the API: a request-rate limiter and an adaptive cap on jobs running remotely."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

import anyio
from aiolimiter import AsyncLimiter


def rate_limiter(per_second: float) -> AsyncLimiter:
    """A leaky bucket for ``per_second`` requests that holds at most a tenth of a second of burst.

    aiolimiter's bucket allows a burst of its whole capacity at start; a small capacity keeps
    the first second as even as the rest while still absorbing timer jitter.
    """
    period = max(0.1, 1.0 / per_second)
    return AsyncLimiter(max_rate=per_second * period, time_period=period)


def decreased(limit: float, factor: float = 0.75) -> float:
    """The cap after the server said it runs too many of our jobs."""
    return max(1.0, limit * factor)


def increased(limit: float, ceiling: float) -> float:
    """The cap after a submit went through: about +1 per cap's worth of successes."""
    return min(ceiling, limit + 1.0 / limit)


class AdaptiveLimit:
    """How many of our jobs may run remotely at once, found by probing (AIMD).

    Starts at ``ceiling``; each "too many concurrent jobs" answer cuts it by a quarter (at most
    once per ``cooldown`` seconds, since one burst of refusals is one signal), and each accepted
    submit raises it slowly back. Jobs hold a slot from submit until they end.
    """

    __slots__ = ("_changed", "_clock", "_last_cut", "ceiling", "cooldown", "in_use", "limit")

    def __init__(
        self, ceiling: int, cooldown: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ceiling = float(ceiling)
        self.limit = float(ceiling)
        self.cooldown = cooldown
        self.in_use = 0
        self._clock = clock
        self._last_cut = -float("inf")
        self._changed = anyio.Event()

    @contextlib.asynccontextmanager
    async def slot(self, *, force: bool = False) -> AsyncIterator[None]:
        """Hold one slot for the block; ``force`` counts a job already running remotely (a
        resumed one) whatever the cap. The block's owner alone releases it, however it ends."""
        if not force:
            while self.in_use >= int(self.limit):
                await self._changed.wait()
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._notify()

    def overloaded(self) -> None:
        now = self._clock()
        if now - self._last_cut >= self.cooldown:
            self.limit = decreased(self.limit)
            self._last_cut = now

    def accepted(self) -> None:
        before = int(self.limit)
        self.limit = increased(self.limit, self.ceiling)
        if int(self.limit) > before:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class SubmitWindow:
    """How many POSTs may be in flight at once (slow start, like TCP's congestion window).

    Starts at one and grows by one with each cleanly answered POST, up to ``ceiling``. A lost
    answer drops it to one and holds it there for ``hold`` clean POSTs: lost answers come in
    bursts (a network blip), and POSTs in flight one at a time are always told apart.
    """

    __slots__ = ("_hold_left", "ceiling", "hold", "level")

    def __init__(self, ceiling: int, hold: int | None = None) -> None:
        self.ceiling = ceiling
        self.hold = max(4, ceiling) if hold is None else hold
        self.level = 1
        self._hold_left = 0

    def clean(self) -> None:
        if self._hold_left:
            self._hold_left -= 1
        else:
            self.level = min(self.ceiling, self.level + 1)

    def lost(self) -> None:
        self.level = 1
        self._hold_left = self.hold
