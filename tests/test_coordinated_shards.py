"""Shards of one split sharing one account through the Redis coordinator (issue #29, item 4):
several engines in one event loop against one in-process emulator that refuses a job past
the account's limit (429), each engine a process of its own as Redis sees it; and real
processes through the command line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency
from runner.emulator.jobs import EmulatedJob
from runner.emulator.statuses import TERMINAL
from runner.engine import RunResult
from runner.exitcodes import ExitCode
from runner.manifest import expand, load_manifest
from tests.emulator_helpers import emulator_thread
from tests.engine_helpers import FAST, cli_process, manifest_text
from tests.in_process import InProcess, in_process
from tests.redis_helpers import coordinator_at, redis_server

LIMIT = 4  # the account's jobs at once; it answers 429 past them


def _peak(inproc: InProcess) -> list[int]:
    """The most jobs the account ran at once, kept up to date as jobs are submitted."""
    peak = [0]
    store = next(iter(inproc.emulator.accounts.values())).store

    def saw(event: str, job: EmulatedJob) -> None:
        if event == "submit":
            now = store.now()
            running = sum(1 for j in store.jobs.values() if j.status(now) not in TERMINAL)
            peak[0] = max(peak[0], running)

    inproc.emulator.observers.append(saw)
    return peak


async def _round(
    shards: list[int], at_once: int, run: Callable[[int], Awaitable[RunResult]]
) -> dict[int, RunResult]:
    """The shards run ``at_once`` at a time, as a throttled job array runs them (``%4``)."""
    results: dict[int, RunResult] = {}
    slots = anyio.Semaphore(at_once)

    async def one(index: int) -> None:
        async with slots:
            results[index] = await run(index)

    async with anyio.create_task_group() as group:
        for index in shards:
            group.start_soon(one, index)
    return results


async def test_shards_lease_the_whole_account_and_never_pass_its_limit(
    tmp_path: Path, redis_url: str
) -> None:
    # 8 shards of a split on an account that runs 4 jobs at once, 4 shards at a time: without
    # a coordinator the split is refused (8 shards, 4 slots); with it no shard divides the
    # account, each leases what is free, and none is ever refused for the account's limit.
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(48, concurrency=LIMIT, poll_interval=0.5))
    config = EmulatorConfig(latency=Latency.parse("fixed:2"), concurrency_limit=LIMIT)
    async with in_process(config) as inproc:
        peak = _peak(inproc)

        async def shard(index: int) -> RunResult:
            options = dataclasses.replace(FAST, shard=(index, 8))
            async with coordinator_at(redis_url, inproc.clock) as coordinator:
                return await run_batch(
                    manifest,
                    tmp_path / f"shard-{index}",
                    options=options,
                    coordinator=coordinator,
                    **inproc.run_args("the-account"),
                )

        started = inproc.clock.time()
        results = await _round(list(range(1, 9)), 4, shard)
        took = inproc.clock.time() - started
        stats = inproc.emulator.snapshot()
    assert all(result.exit_code == ExitCode.OK for result in results.values())
    assert stats["submits"] == 48
    assert stats["paid_twice"] == 0
    assert stats.get("refused_429", 0) == 0  # never a job past the account's limit
    assert peak[0] == LIMIT  # and the account was used whole
    ideal = 48 / LIMIT * 2  # 48 jobs of 2 s on 4 slots
    assert took < 1.3 * ideal, f"{took:.1f} s of virtual time, {ideal:.0f} at best"
    for index in range(1, 9):  # each shard had the account's concurrency, not an eighth
        summary = json.loads((tmp_path / f"shard-{index}" / "summary.json").read_text())
        assert summary["settings"]["concurrency"] == LIMIT


async def test_one_budget_over_the_shards_is_overshot_by_at_most_one_job(
    tmp_path: Path, redis_url: str
) -> None:
    # Four shards at once, a quarter of the jobs failing (not billed: their price comes back),
    # one budget of 10.5 jobs' price in compute units over them all.
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(40, concurrency=LIMIT, poll_interval=0.5, max_attempts=1))
    price = next(iter(expand(load_manifest(manifest)))).units
    assert price is not None
    budget = 10.5 * price
    config = EmulatorConfig(
        latency=Latency.parse("uniform:1-3"), concurrency_limit=LIMIT, failure_rate=0.25, seed=7
    )
    async with in_process(config) as inproc:

        async def shard(index: int) -> RunResult:
            options = dataclasses.replace(FAST, shard=(index, 4), budget=budget, budget_unit="cu")
            async with coordinator_at(redis_url, inproc.clock) as coordinator:
                return await run_batch(
                    manifest,
                    tmp_path / f"shard-{index}",
                    options=options,
                    coordinator=coordinator,
                    **inproc.run_args("the-account"),
                )

        results = await _round([1, 2, 3, 4], 4, shard)
        stats = inproc.emulator.snapshot()
    spent = stats["credits_spent"]  # failed jobs are not billed
    assert spent <= budget + price  # overshot by one job's price at most (here: not at all)
    assert spent >= budget / 2  # and not a quarter of it each, stopping with money left
    assert stats["jobs_by_status"].get("failed", 0) >= 1  # refunds were needed
    assert sum(result.counts.over_budget for result in results.values()) >= 1
    assert {result.exit_code for result in results.values()} <= {ExitCode.STOPPED, 1}
    assert stats["paid_twice"] == 0


async def test_a_coordinator_lost_mid_run_stops_submitting_and_a_rerun_pays_nothing_twice(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(24, concurrency=LIMIT, poll_interval=0.5))
    config = EmulatorConfig(latency=Latency.parse("fixed:2"), concurrency_limit=LIMIT)
    out = tmp_path / "out"
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, server):
        async with in_process(config) as inproc:
            submits = 0

            def redis_goes_away(event: str, job: EmulatedJob) -> None:
                nonlocal submits
                submits += event == "submit"
                if submits == 6 and server.poll() is None:
                    server.kill()
                    server.wait()

            inproc.emulator.observers.append(redis_goes_away)
            async with coordinator_at(url, inproc.clock) as coordinator:
                stopped = await run_batch(
                    manifest, out, options=FAST, coordinator=coordinator, **inproc.run_args()
                )
            resumed = await run_batch(manifest, out, options=FAST, **inproc.run_args())
            stats = inproc.emulator.snapshot()
    assert stopped.exit_code == ExitCode.STOPPED
    assert stopped.stopped is not None
    assert "the coordinator is lost" in stopped.stopped
    assert 6 <= stopped.counts.completed < 24  # what was in flight finished
    assert resumed.exit_code == ExitCode.OK
    assert stats["submits"] == 24
    assert stats["duplicate_submits"] == 0
    assert stats["paid_twice"] == 0


def test_a_coordinator_that_cannot_be_used_is_a_usage_error_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(4))
    out = tmp_path / "out"
    run = ["run", str(manifest), "--api-base", "http://127.0.0.1:9", "--out", str(out)]
    nobody = "redis://:secret@127.0.0.1:1/0"  # nothing listens on port 1
    assert main([*run, "--coordinator", nobody]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "Redis does not answer" in err
    assert "secret" not in err
    assert main([*run, "--coordinator", "http://127.0.0.1:6379"]) == ExitCode.USAGE
    assert "give a Redis URL" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # the extra is not installed
    monkeypatch.setenv("KREA_BATCH_COORDINATOR", "redis://127.0.0.1:6379")
    assert main(run) == ExitCode.USAGE
    assert "pip install '.[redis]'" in capsys.readouterr().err
    assert not out.exists()


def test_without_a_coordinator_more_shards_than_slots_are_refused_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(16))
    assert main(["plan", str(manifest), "--shard", "1/16", "--concurrency", "8"]) == 2
    assert "--coordinator redis://HOST:6379" in capsys.readouterr().err
    plan = ["plan", str(manifest), "--shard", "1/16", "--concurrency", "8", "--json"]
    assert main([*plan, "--coordinator", "redis://127.0.0.1:6379"]) == 0
    assert json.loads(capsys.readouterr().out)["per_shard"] == {}
    assert main([*plan[:-1], "--coordinator", "redis://127.0.0.1:6379"]) == 0
    assert "lease the account's jobs at once" in capsys.readouterr().out


async def test_processes_share_one_account_through_redis(tmp_path: Path, redis_url: str) -> None:
    # Two processes, each a shard of two, on an account of 2 jobs at once: each asks for the
    # account's 2 (not 1 as a static split gives), and together they never pass it.
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(16, concurrency=2, poll_interval=0.05))
    config = EmulatorConfig(latency=Latency.parse("fixed:0.3"), concurrency_limit=2)
    with emulator_thread(config) as emu:
        env = {"KREA_API_TOKEN": "the-account", "KREA_BATCH_COORDINATOR": redis_url}
        runs: list[Any] = [
            cli_process(
                *("run", str(manifest), "--api-base", emu.url, "--shard", f"{index}/2"),
                *("--out", str(tmp_path / f"shard-{index}")),
                env=env,
            )
            for index in (1, 2)
        ]
        ended = await asyncio.gather(*runs)
        stats = emu.emulator.snapshot()
    assert [code for code, _ in ended] == [0, 0], [err for _, err in ended]
    assert stats["submits"] == 16
    assert stats.get("refused_429", 0) == 0
    assert stats["paid_twice"] == 0
    for index in (1, 2):
        summary = json.loads((tmp_path / f"shard-{index}" / "summary.json").read_text())
        assert summary["settings"]["concurrency"] == 2
