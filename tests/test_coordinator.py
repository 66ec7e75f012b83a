"""The Redis coordinator itself (issue #29, item 4): processes of a run, each a coordinator of
its own on one real redis-server, lease one key's slots, rate and budget on virtual time."""

from __future__ import annotations

import anyio
import pytest

from runner.coordination.redis import RedisCoordinator
from runner.engine.coordinator import CoordinatorLost, NotLeased
from runner.jobspec import JobSpec
from tests.redis_helpers import coordinator_at
from tests.virtual_time import START, VirtualClock, virtual_time

ACCOUNT = "0123abcd"


async def _taken(coordinator: RedisCoordinator, clock: VirtualClock, within: float) -> str | None:
    """A lease of ACCOUNT's slots if one comes within ``within`` virtual seconds."""
    with clock.move_on_after(within):
        return await coordinator.slots(ACCOUNT, 4).take()
    return None


async def test_processes_share_one_cap_and_a_slot_given_back_goes_on(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as one,
        coordinator_at(redis_url, clock) as other,
        anyio.create_task_group() as group,
    ):
        group.start_soon(one.keep_up)  # as a run's engine does
        mine = [await one.slots(ACCOUNT, 4).take() for _ in range(3)]
        theirs = await other.slots(ACCOUNT, 4).take()
        assert await _taken(other, clock, 10) is None  # 4 of 4 held: no fifth, however long
        assert await _taken(one, clock, 10) is None
        one.slots(ACCOUNT, 4).give_back(mine[0])
        assert await _taken(other, clock, 1) is not None  # freed by another process: seen
        assert len({*mine, theirs}) == 4
        group.cancel_scope.cancel()


async def test_a_process_that_dies_loses_its_leases_by_expiry(redis_url: str) -> None:
    clock = VirtualClock()
    async with virtual_time(clock), coordinator_at(redis_url, clock, ttl=30) as alive:
        dead = RedisCoordinator(alive.client, clock, ttl=30)  # killed: never renews, never closes
        for _ in range(4):
            await dead.slots(ACCOUNT, 4).take()
        started = clock.time()
        assert await _taken(alive, clock, 60) is not None
        assert 30 <= clock.time() - started < 31  # once its leases expired, not before


async def test_leases_renewed_by_their_holder_never_expire(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock, ttl=30) as holder,
        coordinator_at(redis_url, clock, ttl=30) as other,
        anyio.create_task_group() as group,
    ):
        group.start_soon(holder.keep_up)
        for _ in range(4):
            await holder.slots(ACCOUNT, 4).take()
        assert await _taken(other, clock, 100) is None  # three lease times: still held
        group.cancel_scope.cancel()


async def test_a_job_held_counts_whatever_the_cap(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as resumed,
        coordinator_at(redis_url, clock) as other,
        anyio.create_task_group() as group,
    ):
        group.start_soon(resumed.keep_up)
        held = [resumed.slots(ACCOUNT, 4).hold() for _ in range(4)]  # running when it started
        await clock.sleep(0.1)  # the keeper sends them on
        assert await _taken(other, clock, 5) is None
        resumed.slots(ACCOUNT, 4).give_back(held[0])
        assert await _taken(other, clock, 1) is not None
        group.cancel_scope.cancel()


async def test_a_job_waiting_for_a_slot_gives_up_when_its_run_stops(redis_url: str) -> None:
    clock = VirtualClock()
    stopping = False
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as busy,
        coordinator_at(redis_url, clock) as stopped,
    ):
        for _ in range(4):
            await busy.slots(ACCOUNT, 4).take()
        share = stopped.slots(ACCOUNT, 4, lambda: stopping)
        refused: list[str] = []

        async def waits() -> None:
            try:
                await share.take()
            except NotLeased as exc:
                refused.append(str(exc))

        async with anyio.create_task_group() as group:
            group.start_soon(waits)
            await clock.sleep(5)  # it waits: the account is full
            stopping = True  # Ctrl-C: it gives up at its next look, not after the drain
        assert refused == ["the run is stopping"]
        assert clock.time() - START < 5.2


async def test_a_429_lowers_the_shared_limit_for_every_process(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as told,
        coordinator_at(redis_url, clock) as other,
    ):
        share = told.slots(ACCOUNT, 4)
        share.overloaded()
        share.overloaded()  # the same burst: one cut
        await share.flush()
        assert await other.slots(ACCOUNT, 4).limit() == 3.0
        for _ in range(3):
            assert await _taken(other, clock, 1) is not None
        assert await _taken(other, clock, 5) is None  # 3 running: the cut cap is full
        for _ in range(4):  # accepted submits raise it back, about one per cap's worth
            share.accepted()
        await share.flush()
        assert await other.slots(ACCOUNT, 4).limit() == pytest.approx(4.0)


async def test_a_late_process_gets_its_part_as_slots_free(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as early,
        coordinator_at(redis_url, clock) as late,
        anyio.create_task_group() as group,
    ):
        share = early.slots(ACCOUNT, 4)
        leases = [await share.take() for _ in range(4)]
        got: list[str] = []

        async def wants(coordinator: RedisCoordinator) -> None:
            got.append(await coordinator.slots(ACCOUNT, 4).take())

        group.start_soon(wants, late)
        await clock.sleep(0.5)  # the late one waits, and says so
        group.start_soon(wants, early)  # the early one wants a fifth
        await clock.sleep(0.5)
        share.give_back(leases[0])  # the early one asks first, and holds more: it waits
        await clock.sleep(0.5)
        assert len(got) == 1
        assert got[0].startswith(late.holder + "#")
        group.cancel_scope.cancel()


async def test_one_request_rate_over_every_process(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as one,
        coordinator_at(redis_url, clock) as other,
    ):
        sent = 0

        async def requests(coordinator: RedisCoordinator, until: float) -> None:
            nonlocal sent
            rate = coordinator.rate(ACCOUNT, 10.0, 5.0)
            while True:
                await rate.acquire()
                if clock.time() >= until:
                    return
                sent += 1

        start = clock.time()
        async with anyio.create_task_group() as group:
            group.start_soon(requests, one, start + 10)
            group.start_soon(requests, other, start + 10)
        assert 99 <= sent <= 101  # 10 a second together (and a burst of one), not 20


def _job(key: str) -> JobSpec:
    return JobSpec(
        key, 0, 0, None, "flux-1-dev", "/generate/image/bfl/flux-1-dev", {}, 0, None, {}, 3.0
    )


async def test_one_budget_over_the_processes_of_a_run(redis_url: str) -> None:
    clock = VirtualClock()
    async with (
        virtual_time(clock),
        coordinator_at(redis_url, clock) as one,
        coordinator_at(redis_url, clock) as other,
    ):
        mine = one.budget("run", "out/shard-1", 10.0, "cu")
        theirs = other.budget("run", "out/shard-2", 10.0, "cu")
        another_run = other.budget("another", "out/shard-2", 10.0, "cu")
        assert await mine.reserve(_job("a")) is None
        assert await theirs.reserve(_job("b")) is None
        assert await mine.reserve(_job("c")) is None
        refusal = await theirs.reserve(_job("d"))  # 9 of 10 committed: 3 more would pass it
        assert refusal is not None
        assert "(9 CU of 10 CU committed by the run's processes together)" in refusal
        assert await another_run.reserve(_job("d")) is None  # another run: its own budget
        assert await mine.reserve(_job("a")) is None  # asked again (a rerun): counted once
        await mine.refund(_job("c"))  # failed, cancelled or never created: not billed
        assert await theirs.reserve(_job("d")) is None


async def test_a_coordinator_that_goes_away_is_lost_and_sends_nothing_more(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.redis_helpers import redis_server

    clock = VirtualClock()
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, server):
        async with virtual_time(clock), coordinator_at(url, clock) as coordinator:
            share = coordinator.slots(ACCOUNT, 4)
            await share.take()
            server.kill()
            server.wait()
            with pytest.raises(CoordinatorLost):
                await share.take()
            assert coordinator.lost is not None
            assert "Redis did not answer" in await coordinator.wait_lost()
            with pytest.raises(CoordinatorLost):
                await coordinator.budget("run", "out", 10.0, "cu").reserve(_job("a"))
            with clock.move_on_after(1) as scope:  # requests go on at the process's own pace
                await coordinator.rate(ACCOUNT, 10.0, 5.0).acquire()
            assert not scope.cancelled_caught
