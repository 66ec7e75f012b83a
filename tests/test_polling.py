"""How the runner learns that jobs ended: the listing, per-job polls, and the shared rate."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import run_batch
from runner.api.limiter import SharedRate
from runner.api.remote import JobStatus, ListedJob
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.emulator.jobs import EmulatedJob
from runner.engine.watching import ENDS_PER_PAGE, Lister, Watch
from tests.api_stub import ApiStub
from tests.engine_helpers import FAST, check_folder, small_manifest
from tests.in_process import in_process
from tests.virtual_time import VirtualClock, virtual_time

QUICK = Latency.parse("fixed:0.1")


def _requests_seen(emulator: Any) -> Counter[str]:
    """Per-job polls by job id, counted as the emulator answers them."""
    polls: Counter[str] = Counter()

    def count(kind: str, job: EmulatedJob) -> None:
        if kind == "poll":
            polls[job.id] += 1

    emulator.observers.append(count)
    return polls


async def test_list_mode_learns_how_every_job_ended_from_the_listing(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        polls = _requests_seen(emu.emulator)
        result = await run_batch(
            small_manifest(40, concurrency=16), tmp_path, **emu.via, token="t", options=FAST
        )
        check_folder(tmp_path, 40, emu.emulator)
        stats = emu.emulator.snapshot()
    assert result.counts.completed == 40
    assert stats["lists"] > 0
    assert sum(polls.values()) == 0, "every job's end should have come from the listing"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"]["submit"] == 40
    assert summary["requests"]["list"] == stats["lists"]
    assert summary["requests"]["download"] == 40
    assert summary["requests_per_job"]["api"] == pytest.approx((40 + stats["lists"]) / 40, 0.01)


async def test_a_job_missing_from_the_listing_is_finished_through_its_own_poll(
    tmp_path: Path,
) -> None:
    async with run_emulator(EmulatorConfig(latency=QUICK)) as emu:
        store = emu.emulator.store
        listed = store.newest_first
        hidden: list[str] = []

        def without_the_first_job(before: float | None, status: JobStatus | None) -> Iterator[Any]:
            first = next(iter(store.jobs))
            if not hidden:
                hidden.append(first)
            return (job for job in listed(before, status) if job.id != first)

        store.newest_first = without_the_first_job  # type: ignore[method-assign]
        polls = _requests_seen(emu.emulator)
        result = await run_batch(
            small_manifest(12), tmp_path, api_base=emu.url, token="t", options=FAST
        )
        check_folder(tmp_path, 12, emu.emulator)
    assert result.counts.completed == 12
    assert set(polls) == {hidden[0]}, "only the job the listing never shows is polled alone"


async def test_a_refused_listing_falls_back_to_polling_each_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runner")
    async with in_process(EmulatorConfig(latency=QUICK, listing=False)) as emu:
        polls = _requests_seen(emu.emulator)
        result = await run_batch(small_manifest(10), tmp_path, **emu.via, token="t", options=FAST)
        check_folder(tmp_path, 10, emu.emulator)
    assert result.counts.completed == 10
    assert len(polls) == 10, "each job is polled on its own once the listing is refused"
    assert "job listing is refused" in caplog.text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"]["list"] == 2  # one job's page to read the clock, one refused


async def test_job_mode_polls_each_job_and_never_lists(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        polls = _requests_seen(emu.emulator)
        result = await run_batch(
            small_manifest(10, poll_mode="job"), tmp_path, **emu.via, token="t", options=FAST
        )
        stats = emu.emulator.snapshot()
    assert result.counts.completed == 10
    assert stats.get("lists", 0) == 1  # a page of one job, to read the server's clock
    assert len(polls) == 10


class _Gate:
    """A rate that lets nothing through until the test opens it."""

    def __init__(self) -> None:
        self.opened = anyio.Event()

    async def acquire(self) -> None:
        await self.opened.wait()


async def test_a_poll_waits_one_request_behind_queued_submits_not_behind_all_of_them() -> None:
    gate = _Gate()
    rate = SharedRate(1.0, limiter=gate)
    order: list[str] = []

    async def request(kind: str, name: str) -> None:
        await rate.acquire(kind)
        order.append(name)

    async with anyio.create_task_group() as group:
        for n in range(10):
            group.start_soon(request, "submit", f"submit {n}")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(request, "track", "poll")
        await anyio.wait_all_tasks_blocked()
        gate.opened.set()
    assert order.index("poll") == 2, order  # after the submit at the rate and the next one
    assert [name for name in order if name != "poll"] == [f"submit {n}" for n in range(10)]


async def test_a_request_cancelled_while_it_waits_its_turn_holds_nobody_up() -> None:
    gate = _Gate()
    rate = SharedRate(1.0, limiter=gate)
    done: list[str] = []

    async def request(kind: str, name: str) -> None:
        await rate.acquire(kind)
        done.append(name)

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(request, "submit", f"submit {n}")
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0) as doomed:
            await request("track", "cancelled poll")
        assert doomed.cancelled_caught
        group.start_soon(request, "track", "poll")
        await anyio.wait_all_tasks_blocked()
        gate.opened.set()
    assert "cancelled poll" not in done
    assert sorted(done) == ["poll", "submit 0", "submit 1", "submit 2"]


class _EndlessListing(ApiStub):
    """A listing of other, newer jobs that always has another page."""

    def __init__(self, newest: float) -> None:
        super().__init__()
        self.newest = newest
        self.pages = 0

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        self.pages += 1
        start = self.newest - (self.pages - 1) * limit
        jobs = [ListedJob(f"other-{start - n}", start - n, "processing") for n in range(limit)]
        return jobs, f"page-{self.pages + 1}"


class _LoopingListing(_EndlessListing):
    """A listing whose cursor comes back to the same first page."""

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        self.pages += 1
        jobs = [ListedJob(f"other-{n}", self.newest - n, "processing") for n in range(limit)]
        return jobs, "again"


async def test_a_listing_whose_cursor_loops_hands_its_jobs_to_their_own_polls() -> None:
    clock = VirtualClock()
    client = _LoopingListing(newest=clock.time())
    watch = Watch("mine", 2.0, due=0.0, created_after=clock.time() - 1_000)
    lister = Lister(
        client,
        clock,
        {"mine": watch},
        2.0,
        rng=random.Random(0),
        on_refused=lambda exc: None,
        on_error=lambda exc: None,
    )
    await lister.sweep([watch])
    assert client.pages == 2  # the second page came back with the same cursor: no third
    assert watch.alone
    assert watch.poll_now


async def test_a_job_older_than_the_pages_read_is_polled_alone_at_once() -> None:
    """Paging back to a straggler costs more than asking for it: it leaves the listing at
    once, while a job within the pages read is only counted as missed."""
    clock = VirtualClock()
    client = _EndlessListing(newest=clock.time())
    old = Watch("old", 2.0, due=0.0, created_after=clock.time() - 10_000)
    recent = Watch("recent", 2.0, due=0.0, created_after=clock.time() - 1)
    watches = {"old": old, "recent": recent}
    lister = Lister(
        client,
        clock,
        watches,
        2.0,
        rng=random.Random(0),
        on_refused=lambda exc: None,
        on_error=lambda exc: None,
    )
    await lister.sweep([old, recent])
    assert client.pages == 2, "a pass reads a bounded number of pages"
    assert old.alone
    assert old.poll_now
    assert old.missed == 0
    assert not recent.alone
    assert recent.missed == 1
    assert lister.stats.beyond_reach == 1


class _EndsAt(ApiStub):
    """A listing in which each job shows completed from its own end time (virtual clock)."""

    def __init__(self, clock: VirtualClock, ends: dict[str, float]) -> None:
        super().__init__()
        self.clock = clock
        self.ends = ends
        self.calls: list[float] = []

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        now = self.clock.monotonic()
        self.calls.append(now)
        jobs = []
        for job_id, end in self.ends.items():
            data = {"job_id": job_id, "status": "completed" if end <= now else "processing"}
            data["result"] = {"urls": ["https://cdn.example.com/a.png"]}
            jobs.append(ListedJob(job_id, None, data["status"], data))
        return jobs, None


async def test_the_listing_looks_when_a_job_is_due_within_a_budget_of_pages() -> None:
    """A pass comes when a job is due (its model's typical end), not at the next regular
    tick; jobs due soon after share the next pass, which waits until enough jobs are
    likely to have ended to be worth a page (ENDS_PER_PAGE at 1 ended per 0.3 s)."""
    clock = VirtualClock()
    start = clock.monotonic()
    ends = {f"job-{n}": start + 0.3 + n * 0.01 for n in range(5)}
    client = _EndsAt(clock, ends)
    watches = {
        job_id: Watch(job_id, 2.0, due=end, created_after=None) for job_id, end in ends.items()
    }
    lister = Lister(
        client,
        clock,
        dict(watches),
        2.0,
        rng=random.Random(0),
        on_refused=lambda exc: None,
        on_error=lambda exc: None,
    )
    async with virtual_time(clock), anyio.create_task_group() as group:
        group.start_soon(lister.run)
        for watch in watches.values():
            await watch.wait(clock, 60)
            assert watch.latest is not None
            del lister.watches[watch.job_id]
        group.cancel_scope.cancel()
    assert client.calls[0] == pytest.approx(start + 0.3), "the first pass when the first is due"
    assert len(client.calls) == 2, "the other four wait out the budget and share one pass"
    assert client.calls[1] - client.calls[0] == pytest.approx(ENDS_PER_PAGE * 0.3)
