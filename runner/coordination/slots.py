"""One key's slots, leased from Redis by this process: a lease per job, renewed while the job
runs, given back when it has left the server; the shared cap's AIMD signals."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from runner.engine.coordinator import NotLeased

if TYPE_CHECKING:
    from runner.coordination.redis import RedisCoordinator


class RedisSlots:
    """The slots of one key (runner.engine.coordinator.SlotShare).

    Leases are members of a sorted set scored by their expiry. Jobs waiting for one are served
    in turn: the first asks Redis, and asks again when this process gives a slot back or every
    ``poll`` seconds (a slot freed by another process is seen then). What needs no answer (a
    slot given back, a running job held, an AIMD signal) is sent on by the coordinator's keeper
    soon after; every call that changes leases is made one at a time, so Redis sees them in the
    order they happened here.
    """

    def __init__(
        self,
        coordinator: RedisCoordinator,
        account: str,
        ceiling: int,
        stopping: Callable[[], bool],
    ) -> None:
        self._coordinator = coordinator
        self._stopping = stopping
        base = f"{coordinator.prefix}:account:{account}"
        self._slots, self._limit, self._wanting = (
            f"{base}:slots",
            f"{base}:limit",
            f"{base}:wanting",
        )
        self.ceiling = ceiling
        self.held: set[str] = set()  # leases of jobs running now
        self._adds: set[str] = set()  # held whatever the cap, not yet in Redis
        self._drops: set[str] = set()  # given back, not yet out of Redis
        self._cut = False  # a "too many jobs" answer, not yet told
        self._accepts = 0  # accepted submits, not yet told
        self._turn = anyio.Lock()  # the jobs waiting for a lease, in turn
        self._calls = anyio.Lock()  # one lease call at a time
        self._waiting = 0
        self._poke = anyio.Event()
        self._ids = itertools.count(1)

    def _lease(self) -> str:
        return f"{self._coordinator.holder}#{next(self._ids)}"

    async def take(self) -> str:
        lease = self._lease()
        coordinator = self._coordinator
        self._waiting += 1
        try:
            async with self._turn:
                while True:
                    if self._stopping():
                        raise NotLeased("the run is stopping")
                    self._poke = anyio.Event()
                    if await self._acquire(lease):
                        self.held.add(lease)
                        return lease
                    with coordinator.clock.move_on_after(coordinator.poll):
                        await self._poke.wait()
        except BaseException:
            if lease not in self.held:  # a call cut short may have been granted: drop it
                self._drops.add(lease)
                coordinator.dirty()
            raise
        finally:
            self._waiting -= 1

    async def _acquire(self, lease: str) -> bool:
        coordinator = self._coordinator
        async with self._calls:
            await self._settle(coordinator.clock.time())  # slots given back count as free
            granted = await coordinator.call(
                "acquire",
                [self._slots, self._limit, self._wanting],
                [
                    coordinator.clock.time(),
                    coordinator.ttl,
                    self.ceiling,
                    lease,
                    coordinator.holder,
                    coordinator.wait_ttl,
                    int(self._waiting > 1),
                    coordinator.keep,
                ],
            )
        return int(granted) == 1

    def give_back(self, lease: str) -> None:
        self.held.discard(lease)
        if lease in self._adds:
            self._adds.discard(lease)  # never sent
        else:
            self._drops.add(lease)
        self._poke.set()  # this process's next job asks at once
        self._coordinator.dirty()

    def hold(self) -> str:
        lease = self._lease()
        self.held.add(lease)
        self._adds.add(lease)
        self._coordinator.dirty()
        return lease

    def overloaded(self) -> None:
        self._cut = True
        self._coordinator.dirty()

    def accepted(self) -> None:
        self._accepts += 1
        self._coordinator.dirty()

    # ---- what the coordinator's keeper calls ---------------------------------------------------

    async def flush(self) -> None:
        """Send on the slots given back, the jobs held and the AIMD signals."""
        async with self._calls:
            await self._settle(self._coordinator.clock.time())
        if self._cut or self._accepts:
            cut, accepts = self._cut, self._accepts
            self._cut, self._accepts = False, 0
            coordinator = self._coordinator
            await coordinator.call(
                "limit",
                [self._limit],
                [
                    coordinator.clock.time(),
                    self.ceiling,
                    int(cut),
                    accepts,
                    coordinator.cooldown,
                    coordinator.keep,
                ],
            )

    async def renew(self) -> None:
        """Renew every lease this process holds (re-adding any that expired meanwhile)."""
        async with self._calls:
            self._adds = set(self.held)
            await self._settle(self._coordinator.clock.time(), always=True)

    async def close(self) -> None:
        """Give back every lease (the run ends)."""
        async with self._calls:
            self._drops |= self.held
            self.held.clear()
            self._adds.clear()
            await self._settle(self._coordinator.clock.time())

    async def _settle(self, now: float, *, always: bool = False) -> None:
        """Send the pending adds and drops (the caller holds ``_calls``)."""
        if not (always or self._adds or self._drops):
            return
        adds, drops = sorted(self._adds), sorted(self._drops)
        self._adds, self._drops = set(), set()
        coordinator = self._coordinator
        await coordinator.call(
            "settle",
            [self._slots],
            [now + coordinator.ttl, coordinator.keep, len(adds), *adds, *drops],
        )

    async def limit(self) -> float:
        """The shared cap now (for figures and tests)."""
        coordinator = self._coordinator
        value = await coordinator.call(
            "limit",
            [self._limit],
            [coordinator.clock.time(), self.ceiling, 0, 0, coordinator.cooldown, coordinator.keep],
        )
        return float(value)
