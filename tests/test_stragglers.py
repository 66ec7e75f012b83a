"""Stragglers: a job stuck in a queue far past its model's time is cancelled, read back
cancelled, and sent again, a bounded number of times; one that completes in the race is
kept. In-process, on virtual time: the stuck jobs sit for ten virtual minutes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner import run_batch
from runner.api.keys import ApiKey
from runner.api.server_clock import ServerClock
from runner.emulator import EmulatorConfig, Latency
from runner.engine import RunResult
from runner.state.events import STRAGGLER, JobCancelled
from runner.state.journal import read_events
from tests.engine_helpers import FAST, check_folder, small_manifest
from tests.in_process import InProcess, InProcessApi, in_process

STUCK = EmulatorConfig(
    latency=Latency.parse("uniform:1-2"), stuck_rate=0.1, stuck_for=600.0, seed=7
)
JOBS = 40


async def _run(tmp_path: Path, emu: InProcess, **run: object) -> tuple[float, RunResult]:
    started = emu.clock.now
    manifest = small_manifest(JOBS, concurrency=8, poll_interval=0.5, **run)
    result = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
    return emu.clock.now - started, result


async def test_stuck_jobs_are_cancelled_read_back_and_sent_again_so_the_run_ends_early(
    tmp_path: Path,
) -> None:
    async with in_process(STUCK) as emu:
        took, result = await _run(tmp_path, emu)
        check_folder(tmp_path, JOBS, emu.emulator)
        stats = emu.emulator.snapshot()
    stuck = stats["jobs_by_status"].get("cancelled", 0)
    assert stuck > 0, "no job was stuck: the test proves nothing"
    assert took < 120, f"the run waited for its stuck jobs ({took:.0f} virtual seconds)"
    assert stats["paid"] == JOBS, "paid jobs = jobs: every stuck one was cancelled unbilled"
    assert result.counts.stragglers == stuck
    assert result.counts.completed == JOBS
    assert result.summary["counts"]["stragglers"] == stuck
    # Every resend comes after a journaled cancel of the job it replaces.
    events = [event for _, event in read_events(tmp_path / ".krea-batch" / "journal.jsonl")]
    cancels = [e for e in events if isinstance(e, JobCancelled)]
    assert {e.why for e in cancels} == {STRAGGLER}
    assert len(cancels) == stuck


async def test_without_straggler_resends_the_run_waits_for_its_stuck_jobs(tmp_path: Path) -> None:
    async with in_process(STUCK) as emu:
        took, result = await _run(tmp_path, emu, straggler_resends=0)
        stats = emu.emulator.snapshot()
    assert took > 600
    assert stats.get("cancels", 0) == 0
    assert result.counts.stragglers == 0


async def test_a_job_stuck_every_time_is_sent_again_at_most_straggler_resends_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    always = dataclasses.replace(STUCK, stuck_rate=1.0, stuck_for=300.0)
    async with in_process(always) as emu:
        manifest = small_manifest(8, concurrency=8, poll_interval=0.5, straggler_after="20s")
        result = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
        check_folder(tmp_path, 8, emu.emulator)
        stats = emu.emulator.snapshot()
    assert result.counts.completed == 8
    assert result.counts.stragglers == 8 * 2, "two cancels a job, then it is waited for"
    assert stats["submits"] == 8 * 3
    assert stats["paid"] == 8
    last = [r for r in caplog.records if "sent again a last time" in r.getMessage()]
    assert len(last) == 8, "each job says once that its next job is waited for"


class _LateCancels(InProcessApi):
    """Every DELETE lands just after the job completed (it loses the race)."""

    async def cancel(self, job_id: str) -> None:
        job = self.core.any_job(job_id)
        assert job is not None
        assert job.start is not None
        job.stuck = 0.0
        job.duration = max(0.0, self.clock.now - job.start - 1e-3)  # it has just completed
        await super().cancel(job_id)


async def test_a_straggler_that_completes_in_the_race_is_kept_and_not_paid_twice(
    tmp_path: Path,
) -> None:
    async with in_process(dataclasses.replace(STUCK, stuck_rate=0.25)) as emu:

        def connect(key: ApiKey, server_clock: ServerClock) -> InProcessApi:
            return _LateCancels(emu.emulator, key.token, emu.clock, server_clock)

        manifest = small_manifest(JOBS, concurrency=8, poll_interval=0.5)
        result = await run_batch(
            manifest, tmp_path, **{**emu.run_args(), "connect": connect}, options=FAST
        )
        check_folder(tmp_path, JOBS, emu.emulator)
        stats = emu.emulator.snapshot()
    assert stats["cancels_refused"] > 0, "no cancel lost its race: the test proves nothing"
    assert stats.get("cancels", 0) == 0
    assert result.counts.stragglers == 0
    assert stats["submits"] == stats["paid"] == JOBS
    assert result.counts.completed == JOBS
