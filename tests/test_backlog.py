"""A shallow backlog: on an account that queues jobs past its concurrency, only a small
margin of ours waits there; a stop cancels those still waiting (unbilled) and says how many,
and the next run sends them once. In-process, on virtual time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runner import run_batch
from runner.emulator import EmulatorConfig, Latency
from runner.emulator.jobs import EmulatedJob
from runner.emulator.statuses import JobStatus
from runner.state.events import STOPPED, JobCancelled
from runner.state.journal import read_events
from tests.engine_helpers import FAST, check_folder, small_manifest
from tests.in_process import in_process

BACKLOG = EmulatorConfig(latency=Latency.parse("fixed:1"), concurrency_limit=4, overflow="backlog")


async def test_only_a_margin_of_jobs_waits_in_the_accounts_backlog(tmp_path: Path) -> None:
    deepest = 0
    async with in_process(BACKLOG) as emu:
        store = emu.emulator.store

        def depth(kind: str, job: EmulatedJob) -> None:
            nonlocal deepest
            if kind == "submit":
                now = emu.clock.now
                waiting = sum(j.status(now) == JobStatus.BACKLOGGED for j in store.jobs.values())
                deepest = max(deepest, waiting)

        emu.emulator.observers.append(depth)
        started = emu.clock.now
        manifest = small_manifest(60, concurrency=32, poll_interval=0.1)
        result = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
        took = emu.clock.now - started
        check_folder(tmp_path, 60, emu.emulator)
    assert result.counts.completed == 60
    assert 1 <= deepest <= 3, f"{deepest} jobs waited in the backlog (4 run at once)"
    assert took < 60 / 4 * 1.0 * 1.3, f"the slots went unfilled: {took:.1f} virtual seconds"


async def test_a_stop_cancels_the_jobs_still_in_the_backlog_and_the_next_run_sends_them_once(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(BACKLOG, latency=Latency.parse("fixed:5"))
    manifest = small_manifest(20, concurrency=8, poll_interval=0.1)
    async with in_process(config) as emu:
        deadline = emu.clock.now + 7.0  # two rounds of four started; some wait behind them
        options = dataclasses.replace(FAST, deadline=deadline)
        first = await run_batch(manifest, tmp_path, **emu.run_args(), options=options)
        billed = emu.emulator.snapshot()
        again = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
        check_folder(tmp_path, 20, emu.emulator)
        stats = emu.emulator.snapshot()
    assert first.stopped == "--deadline reached"
    assert first.counts.cancelled >= 1, "no job waited in the backlog at the stop"
    assert billed["cancels"] == first.counts.cancelled
    assert billed["jobs_by_status"].get("backlogged", 0) == 0, "nothing left to bill later"
    assert first.counts.completed == billed["paid"], "what ran drained, and only that billed"
    events = [e for _, e in read_events(tmp_path / ".krea-batch" / "journal.jsonl")]
    assert sum(isinstance(e, JobCancelled) and e.why == STOPPED for e in events) == (
        first.counts.cancelled
    )
    assert again.counts.completed == 20 - first.counts.completed
    assert stats["paid"] == 20
    assert stats["submits"] == 20 + first.counts.cancelled


async def test_answers_without_a_status_keep_the_backlog_shallow_from_the_looks(
    tmp_path: Path,
) -> None:
    """Krea's current POST answers carry no status: the looks at our jobs tell which wait
    (the first burst goes out before any look; from the first jobs' end the backlog stays
    within about two margins, as a new job counts as running until it is seen waiting)."""
    deepest = 0
    async with in_process(dataclasses.replace(BACKLOG, dialect="docs")) as emu:
        store = emu.emulator.store
        first_end = emu.clock.now + 2.0  # the first jobs end at 1 s, and the cap comes down

        def depth(kind: str, job: EmulatedJob) -> None:
            nonlocal deepest
            if kind == "submit" and emu.clock.now > first_end:
                now = emu.clock.now
                waiting = sum(j.status(now) == JobStatus.BACKLOGGED for j in store.jobs.values())
                deepest = max(deepest, waiting)

        emu.emulator.observers.append(depth)
        manifest = small_manifest(60, concurrency=32, poll_interval=0.1)
        result = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
    assert result.counts.completed == 60
    assert deepest <= 8, f"{deepest} jobs waited in the backlog (4 run at once)"
