"""Pacing the API: a request-rate limiter and an adaptive cap on jobs running remotely."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import anyio
from aiolimiter import AsyncLimiter

if TYPE_CHECKING:
    from runner.engine.coordinator import SlotShare


def rate_limiter(per_second: float) -> AsyncLimiter:
    """A leaky bucket for ``per_second`` requests that holds at most a tenth of a second of burst.

    aiolimiter's bucket allows a burst of its whole capacity at start; a small capacity keeps
    the first second as even as the rest while still absorbing timer jitter.
    """
    period = max(0.1, 1.0 / per_second)
    return AsyncLimiter(max_rate=per_second * period, time_period=period)


class _Acquirable(Protocol):
    async def acquire(self) -> None: ...


class SharedRate:
    """One request rate shared by kinds of requests, taken in turns so none starves.

    Only one request at a time waits on the rate itself; the next to wait is taken from the
    kinds in turn (round robin), first come first served within a kind. Thirty-two POSTs
    queued for the rate then hold back the next listing by one request, not by 3 s.
    """

    def __init__(self, per_second: float, *, limiter: _Acquirable | None = None) -> None:
        self._rate = limiter or rate_limiter(per_second)
        self._waiting: dict[str, deque[anyio.Event]] = {}
        self._busy = False
        self._turns: deque[str] = deque()  # kinds in the order they are next served

    async def acquire(self, kind: str) -> None:
        """Wait for this request's turn among the kinds, then for the rate."""
        if self._busy:
            queue = self._waiting.setdefault(kind, deque())
            if kind not in self._turns:
                self._turns.append(kind)
            turn = anyio.Event()
            queue.append(turn)
            try:
                await turn.wait()
            except BaseException:
                if turn.is_set():  # given the turn as it was cancelled: pass it on
                    self._pass_on()
                else:
                    queue.remove(turn)
                raise
        self._busy = True
        try:
            await self._rate.acquire()
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        for _ in range(len(self._turns)):
            kind = self._turns.popleft()
            queue = self._waiting[kind]
            if queue:
                queue.popleft().set()
                if queue:
                    self._turns.append(kind)
                return
        self._busy = False


def decreased(limit: float, factor: float = 0.75) -> float:
    """The cap after the server said it runs too many of our jobs."""
    return max(1.0, limit * factor)


def increased(limit: float, ceiling: float) -> float:
    """The cap after a submit went through: about +1 per cap's worth of successes."""
    return min(ceiling, limit + 1.0 / limit)


class AdaptiveLimit:
    """How many of one key's jobs may run remotely at once, found by probing (AIMD).

    Starts at ``ceiling``; each "too many concurrent jobs" answer cuts it by a quarter (at most
    once per ``cooldown`` seconds, since one burst of refusals is one signal), and each accepted
    submit raises it slowly back. It counts; the pool (``runner.engine.accounts``) queues the
    jobs waiting for room on any key, and ``on_room`` tells it when room may have come.

    With a ``share`` (a coordinator's slots of the key) the probing is the share's, over every
    process of the run: this cap stays at ``ceiling``, and each job also leases its slot there.
    """

    __slots__ = (
        "_clock",
        "_last_cut",
        "ceiling",
        "cooldown",
        "in_use",
        "limit",
        "on_room",
        "share",
    )

    def __init__(
        self,
        ceiling: int,
        *,
        clock: Callable[[], float],
        on_room: Callable[[], None] = lambda: None,
        cooldown: float = 2.0,
        share: SlotShare | None = None,
    ) -> None:
        self.ceiling = float(ceiling)
        self.limit = float(ceiling)
        self.cooldown = cooldown
        self.in_use = 0
        self._clock = clock  # monotonic seconds
        self._last_cut = -float("inf")
        self.on_room = on_room
        self.share = share

    @property
    def room(self) -> int:
        """Slots free now."""
        return int(self.limit) - self.in_use

    @contextlib.asynccontextmanager
    async def leased(self) -> AsyncIterator[None]:
        """A new job's slot in the share, for the block: from before its POST until it has
        left the server (no share: nothing to lease)."""
        if self.share is None:
            yield
            return
        lease = await self.share.take()
        try:
            yield
        finally:
            self.share.give_back(lease)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Count a job already running remotely (a resumed one) whatever the cap, for the
        block; its end may make room."""
        lease = self.share.hold() if self.share is not None else None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            if self.share is not None and lease is not None:
                self.share.give_back(lease)
            self.on_room()

    def overloaded(self) -> None:
        if self.share is not None:
            self.share.overloaded()
            return
        now = self._clock()
        if now - self._last_cut >= self.cooldown:
            self.limit = decreased(self.limit)
            self._last_cut = now

    def accepted(self) -> None:
        if self.share is not None:
            self.share.accepted()
        else:
            self.limit = increased(self.limit, self.ceiling)
        self.on_room()

    def backlogged(self, running: int) -> None:
        """A job of ours went to the account's backlog (it queues past its concurrency)
        while ``running`` of ours run: keep only a margin beyond them, enough to refill the
        slots as jobs end (a quarter of what runs, two at least), so that a stop has little
        to cancel."""
        running = max(1, running)
        self.limit = max(1.0, min(self.limit, running + max(2, -(-running // 4))))


class SubmitWindow:
    """How many POSTs may be in flight at once.

    It opens at one: the first answer tells how long a POST takes, and a network that loses
    every answer (a misbehaving proxy) then costs one matching round per POST, never a burst
    of lost POSTs that no listing can tell apart. Several POSTs in flight pay off only when
    the API is distant: when no recent answer came back within ``slow`` seconds (the
    quickest one measures distance, since load only ever adds delay), up to ``ceiling`` go
    at once. A nearby API, at up to 20 POSTs a second, gets one at a time, so a crash leaves
    at most one unanswered. A lost answer drops the window to one and holds it there for
    ``hold`` clean POSTs, since lost answers come in bursts.
    """

    __slots__ = ("_durations", "_hold_left", "ceiling", "hold", "level", "slow")

    def __init__(self, ceiling: int, *, hold: int | None = None, slow: float = 0.05) -> None:
        self.ceiling = ceiling
        self.hold = max(4, ceiling) if hold is None else hold
        self.slow = slow
        self.level = 1
        self._hold_left = 0
        self._durations: deque[float] = deque(maxlen=32)

    def useful(self) -> int:
        """POSTs in flight that the recent round trips make worthwhile."""
        if not self._durations or min(self._durations) < self.slow:
            return 1
        return self.ceiling

    def clean(self, seconds: float) -> None:
        """A POST was answered after ``seconds`` on the wire."""
        self._durations.append(seconds)
        if self._hold_left:
            self._hold_left -= 1
        else:
            self.level = self.useful()

    def lost(self) -> None:
        self.level = 1
        self._hold_left = self.hold
