"""The coordinator over Redis (``--coordinator redis://…``), with ``redis.asyncio``.

Every process of a run is a *holder* (host, pid and a random part); what it leases is named
after it. Keys live under ``krea-batch:account:<fingerprint>:…`` for a key's slots, cap and
request rate (the account is one, whichever run uses it), and ``krea-batch:run:<id>:…`` for a
run's budget (the manifest, the split and the budget's unit); never a token. The scripts are
in runner.coordination.scripts.

A call that fails is tried twice more within a second and a half; then the coordinator is
lost (runner.engine.coordinator says what a run does then).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from runner.api.limiter import rate_limiter
from runner.clock import Clock
from runner.coordination import scripts
from runner.coordination.slots import RedisSlots
from runner.engine.budget import Budget
from runner.engine.coordinator import Acquirable, CoordinatorLost
from runner.jobspec import JobSpec

log = logging.getLogger(__name__)
PREFIX = "krea-batch"
DAY = 86400


def holder_name() -> str:
    """This process, as leases name it (no ``#``: it ends a holder's part of a lease)."""
    host = socket.gethostname().replace("#", "_") or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


class RedisCoordinator:
    """What the processes of a run share, kept in one Redis (runner.engine.coordinator)."""

    def __init__(
        self,
        client: Redis,
        clock: Clock,
        *,
        ttl: float = 30.0,
        poll: float = 0.1,
        cooldown: float = 2.0,
        keep: int = 7 * DAY,
        prefix: str = PREFIX,
        holder: str | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.ttl = ttl  # a lease not renewed for this long is free again
        self.poll = poll  # a job waiting for a slot asks again this often
        self.wait_ttl = max(1.0, 5 * poll)  # a waiting holder is counted this long after asking
        self.cooldown = cooldown  # one cut of the shared cap per this many seconds at most
        self.keep = keep  # every key expires this long after its last use
        self.prefix = prefix
        self.holder = holder or holder_name()
        self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
        self._lost: str | None = None
        self._lost_event = anyio.Event()
        self._dirty = anyio.Event()
        self._shares: dict[str, RedisSlots] = {}

    @property
    def lost(self) -> str | None:
        return self._lost

    async def wait_lost(self) -> str:
        await self._lost_event.wait()
        assert self._lost is not None
        return self._lost

    def lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            self._lost_event.set()
            log.error("the coordinator is lost: %s", reason)

    async def call(self, what: str, keys: list[str], args: list[Any]) -> Any:
        """Run the script ``what`` (runner.coordination.scripts); CoordinatorLost once Redis
        cannot be reached."""
        if self._lost is not None:
            raise CoordinatorLost(self._lost)
        failure: Exception | None = None
        for pause in (0.5, 1.0, None):
            try:
                return await self._scripts[what](keys=keys, args=args)
            except (RedisError, OSError) as exc:
                failure = exc
            if self._lost is not None:
                break
            if pause is not None:
                await self.clock.sleep(pause)
        self.lose(f"Redis did not answer ({failure})" if self._lost is None else self._lost)
        raise CoordinatorLost(self._lost)

    # ---- what a run asks for --------------------------------------------------------------------

    def slots(
        self, account: str, ceiling: int, stopping: Callable[[], bool] = lambda: False
    ) -> RedisSlots:
        share = self._shares.get(account)
        if share is None:
            share = self._shares[account] = RedisSlots(self, account, ceiling, stopping)
        return share

    def rate(self, account: str, per_second: float, alone: float) -> Acquirable:
        return RedisRate(self, account, per_second, alone)

    def budget(self, run: str, folder: str, limit: float | None, unit: str) -> Budget:
        if limit is None:
            return Budget(None, unit)  # nothing to share: the spend is only counted
        return SharedBudget(self, run, folder, limit, unit)

    # ---- the keeper ---------------------------------------------------------------------------

    def dirty(self) -> None:
        """Something is to be sent on (a slot given back, a job held, an AIMD signal)."""
        self._dirty.set()

    async def keep_up(self) -> None:
        """For the run: renew the leases every third of their time, and send on what needs
        no answer as it comes (each stops once the coordinator is lost)."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._heartbeat)
            await self._flusher()

    async def _heartbeat(self) -> None:
        with contextlib.suppress(CoordinatorLost):
            while True:
                await self.clock.sleep(self.ttl / 3)
                for share in list(self._shares.values()):
                    await share.renew()

    async def _flusher(self) -> None:
        with contextlib.suppress(CoordinatorLost):
            while True:
                await self._dirty.wait()
                self._dirty = anyio.Event()
                for share in list(self._shares.values()):
                    await share.flush()

    async def close(self) -> None:
        """Give back every lease still held (the run ends), at best."""
        for share in self._shares.values():
            try:
                await share.close()
            except CoordinatorLost:
                return  # they expire by themselves


class RedisRate:
    """One key's request rate over every process (a token bucket in Redis); this process's
    own pace, ``alone``, once the coordinator is lost."""

    def __init__(
        self, coordinator: RedisCoordinator, account: str, per_second: float, alone: float
    ) -> None:
        self._coordinator = coordinator
        self._key = f"{coordinator.prefix}:account:{account}:rate"
        self._rate = per_second
        self._burst = max(1.0, per_second / 10)  # a tenth of a second, as rate_limiter's
        self._alone = rate_limiter(alone)

    async def acquire(self) -> None:
        coordinator = self._coordinator
        while coordinator.lost is None:
            try:
                wait = float(
                    await coordinator.call(
                        "rate",
                        [self._key],
                        [coordinator.clock.time(), self._rate, self._burst, coordinator.keep],
                    )
                )
            except CoordinatorLost:
                break
            if wait <= 0:
                return
            await coordinator.clock.sleep(max(wait, 0.001))
        await self._alone.acquire()


class SharedBudget(Budget):
    """One budget over every process of a run: a job's price is reserved in Redis before its
    POST, only if the run's total stays within the limit, and released when the job is not
    billed. A job counts once, whichever process or rerun sends it (by its folder and key)."""

    whose = " by the run's processes together"

    def __init__(
        self, coordinator: RedisCoordinator, run: str, folder: str, limit: float, unit: str
    ) -> None:
        super().__init__(limit, unit)
        self._coordinator = coordinator
        base = f"{coordinator.prefix}:run:{run}"
        self._keys = [f"{base}:reserved", f"{base}:committed"]
        self._folder = hashlib.sha256(folder.encode()).hexdigest()[:16]

    def _job(self, spec: JobSpec) -> str:
        return f"{self._folder}:{spec.key}"

    async def _commit(self, spec: JobSpec, price: float) -> float | None:
        coordinator = self._coordinator
        ok, committed = await coordinator.call(
            "reserve",
            self._keys,
            [self._job(spec), repr(price), repr(self.limit), coordinator.keep],
        )
        if int(ok) != 1:
            return float(committed)
        self.committed += price
        return None

    async def refund(self, spec: JobSpec) -> None:
        if self.price(spec) is None:
            return
        try:
            await self._coordinator.call("release", self._keys, [self._job(spec)])
        except CoordinatorLost:
            return  # it stays reserved: the run spends less, never more
        await super().refund(spec)


_SCRIPTS = {
    "acquire": scripts.ACQUIRE,
    "settle": scripts.SETTLE,
    "limit": scripts.LIMIT,
    "rate": scripts.RATE,
    "reserve": scripts.RESERVE,
    "release": scripts.RELEASE,
}
