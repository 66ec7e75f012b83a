"""Virtual time for engine tests: a clock that jumps whenever every task is waiting.

Code under test sleeps through ``VirtualClock.sleep``; a driver task waits until all other
tasks are blocked, then moves time to the earliest sleeper's deadline and wakes it. A second
of virtual time costs microseconds, and the order of events is the same on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.lowlevel
import anyio.to_thread

START = 1_800_000_000.0


class _Timer:
    """A virtual deadline: what it does when time reaches it, unless withdrawn first."""

    __slots__ = ("fire", "live")

    def __init__(self, fire: Callable[[], None]) -> None:
        self.fire = fire
        self.live = True


class VirtualClock:
    """The engine's ``Clock``, on virtual time."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.outside = 0  # calls waiting on a real server (Redis): time waits for their answers
        self._back = anyio.Event()  # set when the last of them is answered
        self._sleepers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    @contextlib.contextmanager
    def move_on_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            timer = _Timer(scope.cancel)
            deadline = self.now + max(0.0, seconds)
            heapq.heappush(self._sleepers, (deadline, next(self._order), timer))
            try:
                yield scope
            finally:
                timer.live = False

    @contextlib.contextmanager
    def outside_call(self) -> Iterator[None]:
        """A call to a real server (Redis) for the block: time stands still until it ends."""
        self.outside += 1
        try:
            yield
        finally:
            self.outside -= 1
            if not self.outside:
                self._back.set()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        wake = anyio.Event()
        timer = _Timer(wake.set)
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), timer))
        try:
            await wake.wait()
        finally:
            timer.live = False

    async def drive(self) -> None:
        """Advance time each time everything else waits (run it beside the code under test)."""
        while True:
            await _all_tasks_blocked()
            if self.outside:  # a server works for a task: time waits for its answer
                self._back = anyio.Event()
                await self._back.wait()
                continue
            if anyio.to_thread.current_default_thread_limiter().borrowed_tokens:
                await anyio.sleep(0.0005)  # a thread works for a task: time waits for it
                continue
            while self._sleepers and not self._sleepers[0][2].live:
                heapq.heappop(self._sleepers)  # a sleep or a deadline no one waits for now
            if not self._sleepers:
                await anyio.sleep(0.001)  # nothing sleeps: whatever runs waits on real I/O
                continue
            deadline = self._sleepers[0][0]
            self.now = max(self.now, deadline)
            while self._sleepers and self._sleepers[0][0] <= deadline:
                timer = heapq.heappop(self._sleepers)[2]
                if timer.live:
                    timer.live = False
                    timer.fire()


async def _all_tasks_blocked() -> None:
    """Return once every other task waits on something (anyio's own check sleeps 0.1 s of
    real time whenever a task is merely ready to run, which made each virtual step slow)."""
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not this and (waiter is None or waiter.done()):
                break
        else:
            return


@contextlib.asynccontextmanager
async def virtual_time(clock: VirtualClock) -> AsyncIterator[VirtualClock]:
    """Drive ``clock`` for the duration of the block."""
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(clock.drive)
            yield clock
            group.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the block's own error, as it raised it
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def inline_offload(counts: list[int]) -> Callable[[Callable[[bytes], None], bytes], object]:
    """A journal offload that writes on the event loop (no thread to race virtual time),
    after one checkpoint so that lines appended meanwhile share the next write; records how
    many lines each write carried."""

    async def offload(write: Callable[[bytes], None], data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        counts.append(data.count(b"\n"))
        write(data)

    return offload
