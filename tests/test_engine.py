"""The engine on the emulator in-process (virtual time, no socket): completion, resume, faults,
stops; and every fault a connection can show at once, over a real socket."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from runner import run_batch
from runner.cli.status import read_status, render_status
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.engine import Engine, EngineOptions, RetryPolicy
from runner.errors import UsageError
from runner.manifest import expand
from runner.outputs import OutputFolder
from tests.engine_helpers import (
    FAST,
    check_folder,
    read_results,
    small_manifest,
    write_ambiguous_journal,
)
from tests.in_process import in_process

QUICK = Latency.parse("fixed:0.05")


async def test_200_jobs_complete_with_verified_files_and_one_submit_each(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        result = await run_batch(
            small_manifest(200, concurrency=32), tmp_path, **emu.run_args(), options=FAST
        )
        records = check_folder(tmp_path, 200, emu.emulator)
        stats = emu.emulator.snapshot()
    assert result.exit_code == 0
    assert {r["status"] for r in records} == {"completed"}
    assert stats["submits"] == 200
    assert stats["duplicate_submits"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"]["completed"] == 200
    assert summary["estimated_spend_units"] == pytest.approx(200 * 17.2)


async def test_a_rerun_skips_finished_jobs_and_submits_nothing(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        await run_batch(small_manifest(10), tmp_path, **emu.run_args(), options=FAST)
        again = await run_batch(small_manifest(10), tmp_path, **emu.run_args(), options=FAST)
        assert emu.emulator.stats["submits"] == 10
    assert again.counts.skipped == 10
    assert again.exit_code == 0
    assert len(read_results(tmp_path)) == 10


async def test_failed_jobs_are_retried_up_to_max_attempts_then_only_on_request(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(latency=QUICK, failure_rate=1.0)
    async with in_process(config) as emu:
        first = await run_batch(
            small_manifest(3, max_attempts=2), tmp_path, **emu.run_args(), options=FAST
        )
        assert emu.emulator.stats["submits"] == 6  # two attempts each
        assert first.exit_code == 1
        assert all(r["error"] for r in read_results(tmp_path))
        again = await run_batch(
            small_manifest(3, max_attempts=2), tmp_path, **emu.run_args(), options=FAST
        )
        assert emu.emulator.stats["submits"] == 6  # failed jobs are not retried unasked
        # The folder still holds 3 failed jobs: the rerun is no success, and says so.
        assert again.exit_code == 1
        assert again.counts.failed_before == 3
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["exit_code"] == 1
        assert summary["folder"] == {
            "jobs": 3,
            "completed": 0,
            "failed": 3,
            "ambiguous": 0,
            "spend_usd": 0.0,
            "spend_units": 0.0,
        }
        assert summary["counts"]["failed_before"] == 3
        retry = dataclasses.replace(FAST, retry_failed=True)
        await run_batch(
            small_manifest(3, max_attempts=1), tmp_path, **emu.run_args(), options=retry
        )
        assert emu.emulator.stats["submits"] == 9


async def test_every_fault_at_once_still_ends_every_job_with_nothing_paid_twice(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(
        latency=Latency.parse("uniform:0.02-0.1"),
        seed=7,
        failure_rate=0.15,
        error_rate=0.1,
        reset_rate=0.05,
        reset_after_create=0.1,
        malformed_rate=0.05,
        truncate_rate=0.15,
        rate_limit=400.0,
        retry_after=0.01,
        concurrency_limit=6,
    )
    async with run_emulator(config) as emu:
        result = await run_batch(
            small_manifest(60, concurrency=10, max_attempts=3),
            tmp_path,
            api_base=emu.url,
            token="t",
            options=FAST,
        )
        records = check_folder(tmp_path, 60, emu.emulator)
        stats = emu.emulator.snapshot()
    counts = result.counts
    assert counts.completed + counts.failed == 60
    assert counts.completed == sum(r["status"] == "completed" for r in records)
    for name in ("errors_5xx", "resets", "resets_after_create", "malformed", "downloads_truncated"):
        assert stats.get(name, 0) > 0, f"the {name} fault never fired: the test proves nothing"
    assert counts.lost_answers > 0
    assert (
        counts.adopted + counts.resent + counts.unmatched + counts.unchecked == counts.lost_answers
    )


async def test_a_lost_submit_answer_is_found_not_resubmitted(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=QUICK, reset_after_create=1.0)
    async with in_process(config) as emu:
        result = await run_batch(small_manifest(5), tmp_path, **emu.run_args(), options=FAST)
        stats = emu.emulator.snapshot()
    assert result.counts.adopted == 5
    assert stats["submits"] == 5
    assert result.exit_code == 0


async def test_concurrency_429s_lower_the_jobs_in_flight_and_the_run_completes(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:0.1"), concurrency_limit=3)
    async with in_process(config) as emu:
        result = await run_batch(
            small_manifest(24, concurrency=12), tmp_path, **emu.run_args(), options=FAST
        )
        check_folder(tmp_path, 24, emu.emulator)
    assert result.counts.completed == 24
    assert result.counts.overload_429 > 0


async def test_out_of_credits_stops_submitting_and_exits_4_then_resumes(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK, credits=90.0)) as emu:
        result = await run_batch(
            small_manifest(10, concurrency=1), tmp_path, **emu.run_args(), options=FAST
        )
        assert result.exit_code == 4
        assert result.counts.completed == 5  # 5 × 17.2 CU
        assert "402" in (result.stopped or "")
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        again = await run_batch(small_manifest(10), tmp_path, **emu.run_args(), options=FAST)
        assert emu.emulator.stats["submits"] == 5
    assert again.exit_code == 0
    assert len(read_results(tmp_path)) == 10


async def test_a_bad_token_exits_4_without_submitting(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK, token="right")) as emu:
        result = await run_batch(small_manifest(3), tmp_path, options=FAST, **emu.run_args("wrong"))
        assert emu.emulator.stats["submits"] == 0
    assert result.exit_code == 4
    assert "401" in (result.stopped or "")


async def test_a_retired_model_fails_its_jobs_with_the_servers_message(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=QUICK, retired=frozenset({"seedream-4"}))
    async with in_process(config) as emu:
        result = await run_batch(small_manifest(2), tmp_path, **emu.run_args(), options=FAST)
    assert result.exit_code == 1
    assert all("410" in r["error"] and "shut down" in r["error"] for r in read_results(tmp_path))


async def test_a_job_that_never_ends_times_out_and_is_cancelled(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:600"))) as emu:
        result = await run_batch(
            small_manifest(1, job_timeout=0.2), tmp_path, **emu.run_args(), options=FAST
        )
        assert emu.emulator.stats["cancels"] == 1
    [record] = read_results(tmp_path)
    assert "timed out" in record["error"]
    assert result.exit_code == 1


async def test_an_expired_image_url_is_refreshed_by_fetching_the_job_again(tmp_path: Path) -> None:
    aged: list[bool] = []

    async with in_process(EmulatorConfig(latency=QUICK, url_ttl=30.0)) as emu:

        def age_the_first_url(event: str, job: object) -> None:
            if event == "download" and not aged:
                aged.append(True)
                emu.clock.now += 60.0  # the URL this download uses is now twice its 30 s life old

        emu.emulator.observers.append(age_the_first_url)
        result = await run_batch(small_manifest(1), tmp_path, **emu.run_args(), options=FAST)
        stats = emu.emulator.snapshot()
    assert result.exit_code == 0
    assert stats["downloads_expired"] == 1
    assert stats["downloads"] == 2
    assert len(read_results(tmp_path)[0]["files"]) == 1


async def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    with OutputFolder(tmp_path), pytest.raises(UsageError, match="in use by another"):
        await run_batch(small_manifest(1), tmp_path, api_base="http://127.0.0.1:9", options=FAST)


async def test_a_torn_last_journal_line_is_tolerated(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        await run_batch(
            small_manifest(4),
            tmp_path,
            **emu.run_args(),
            options=dataclasses.replace(FAST, limit=2),
        )
        journal = tmp_path / ".krea-batch" / "journal.jsonl"
        with journal.open("a") as handle:
            handle.write('{"e":"submitting","k":"abc')  # a crash mid-write
        result = await run_batch(small_manifest(4), tmp_path, **emu.run_args(), options=FAST)
        assert emu.emulator.stats["submits"] == 4
    assert result.counts.skipped == 2
    assert result.counts.completed == 2
    for line in journal.read_text().splitlines():
        json.loads(line)


async def test_limit_runs_only_the_first_jobs(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        result = await run_batch(
            small_manifest(10),
            tmp_path,
            **emu.run_args(),
            options=EngineOptions(handle_signals=False, limit=3),
        )
    assert result.counts.total == 3
    assert len(read_results(tmp_path)) == 3


async def test_cancel_on_exit_cancels_remote_jobs_and_the_next_run_submits_them_again(
    tmp_path: Path,
) -> None:
    def stop_once_two_run(engine: Engine) -> None:
        if engine.counts.submits >= 2 and engine.stopping is None:
            engine.stop("test")

    options = dataclasses.replace(FAST, cancel_on_exit=True)
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:30"))) as emu:
        result = await run_batch(
            small_manifest(6, concurrency=2),
            tmp_path,
            **emu.run_args(),
            options=options,
            on_progress=stop_once_two_run,
        )
        assert result.exit_code == 3
        assert emu.emulator.stats["cancels"] == 2
        assert emu.emulator.store.counts() == {"cancelled": 2}
        assert read_results(tmp_path) == []
        emu.emulator.store.config = dataclasses.replace(emu.emulator.config, latency=QUICK)
        again = await run_batch(
            small_manifest(6, concurrency=2), tmp_path, **emu.run_args(), options=FAST
        )
        assert again.exit_code == 0
        check_folder(tmp_path, 6, emu.emulator)


async def test_resumed_jobs_are_handed_out_once_and_counted_once(tmp_path: Path) -> None:
    def abort_once_all_submitted(engine: Engine) -> None:
        if engine.counts.submits >= 6:
            engine.abort()

    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:1.5"))) as emu:
        first = await run_batch(
            small_manifest(6, concurrency=6),
            tmp_path,
            **emu.run_args(),
            options=FAST,
            on_progress=abort_once_all_submitted,
        )
        assert first.counts.unfinished == 6
        again = await run_batch(
            small_manifest(6, concurrency=2), tmp_path, **emu.run_args(), options=FAST
        )
        assert emu.emulator.stats["submits"] == 6
    assert (again.counts.resumed, again.counts.completed, again.counts.skipped) == (6, 6, 0)


async def test_rate_limit_429s_slow_submits_down_but_never_fail_a_job(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=QUICK, rate_limit=5.0, retry_after=0.05)
    async with in_process(config) as emu:
        result = await run_batch(
            small_manifest(12, rate_limit=1000),
            tmp_path,
            **emu.run_args(),
            options=dataclasses.replace(FAST, retry=RetryPolicy()),
        )
        check_folder(tmp_path, 12, emu.emulator)
    assert result.counts.completed == 12
    assert result.counts.rate_limited_429 > (FAST.retry.max_errors or 0)


async def test_an_abort_during_a_429_backoff_leaves_no_slot_taken(tmp_path: Path) -> None:
    engines: list[Engine] = []

    def abort_once_throttled(engine: Engine) -> None:
        engines.append(engine)
        if engine.counts.rate_limited_429:
            engine.abort()

    config = EmulatorConfig(latency=QUICK, rate_limit=0.001, retry_after=30.0)
    async with in_process(config) as emu:
        result = await run_batch(
            small_manifest(3),
            tmp_path,
            **emu.run_args(),
            options=dataclasses.replace(FAST, retry=RetryPolicy()),
            on_progress=abort_once_throttled,
        )
        assert emu.emulator.stats["submits"] == 0
    engine = engines[-1]
    assert engine.counts.rate_limited_429 >= 1
    assert engine.stats().in_flight == 0
    assert result.exit_code == 3
    assert not any(state.pending_since for state in engine.states.values())


async def test_an_ambiguous_job_keeps_its_candidates_images_and_is_never_sent_again(
    tmp_path: Path,
) -> None:
    """A journal that says a lost POST matched two remote jobs: the run fetches both jobs'
    images into images/_unmatched/, records the job ambiguous, and sends nothing."""
    manifest = small_manifest(2)
    spec = next(iter(expand(manifest)))
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        model = emu.emulator.catalog.resolve("seedream-4")
        ids = [
            emu.emulator.store.create(model, dict(spec.body), None).id,
            emu.emulator.store.create(model, {**spec.body, "seed": 999}, None).id,
        ]
        write_ambiguous_journal(tmp_path, spec.key, ids)
        result = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
        again = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST)
        records = check_folder(tmp_path, 2, emu.emulator)
        assert emu.emulator.stats["submits"] == 1  # only the other job
        paid = emu.emulator.paid()
    assert result.exit_code == 1
    # What the folder says it cost is what was billed: the other job and both candidates.
    assert paid == 3
    price = spec.units or 0.0
    assert result.counts.spend_units == pytest.approx(paid * price)
    assert read_status(tmp_path).counts.spend_units == pytest.approx(paid * price)
    assert again.exit_code == 1  # nothing to do, but the folder still holds an ambiguous job
    assert again.counts.ambiguous_before == 1
    [ambiguous] = [r for r in records if r["status"] == "ambiguous"]
    assert ambiguous["candidates"] == ids
    assert ambiguous["cost_units"] == pytest.approx(2 * price)
    assert "2 of them completed and billed" in ambiguous["error"]
    assert sorted(f["path"] for f in ambiguous["files"]) == sorted(
        f"images/_unmatched/{i}.png" for i in ids
    )
    status = read_status(tmp_path)
    assert status.ambiguous == {spec.key: tuple(ids)}
    assert "ambiguous" in render_status(status)
    worst = (
        "1 ambiguous job, 2 candidate job(s) exist: sending it again pays for at most "
        "1 image(s) twice (17.2 CU)"  # what `run … --retry-ambiguous` says
    )
    assert worst in render_status(status)
    assert status.to_json()["retry_ambiguous_worst_cost"] == "17.2 CU"
    shutil.rmtree(tmp_path / ".krea-batch")  # read from results.jsonl alone: priced the same
    assert read_status(tmp_path).retry_cost == "17.2 CU"


async def test_retry_ambiguous_says_the_worst_case_first_then_sends_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = small_manifest(3)
    specs = list(expand(manifest))
    journal = tmp_path / ".krea-batch" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    lines = [{"e": "submitting", "k": s.key, "a": 1, "t": time.time()} for s in specs[:2]]
    lines += [
        {"e": "ambiguous", "k": specs[0].key, "a": 1, "candidates": ["job-x"]},
        {"e": "ambiguous", "k": specs[1].key, "a": 1, "candidates": [], "why": "cursor loops"},
    ]
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    options = dataclasses.replace(FAST, retry_ambiguous=True)
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        result = await run_batch(manifest, tmp_path, **emu.run_args(), options=options)
        check_folder(tmp_path, 3, emu.emulator)
        assert emu.emulator.stats["submits"] == 3  # each once: the two released, and the third
    assert result.exit_code == 0
    assert (
        "2 ambiguous jobs, 1 candidate job(s) exists, 1 with a listing that could not be read "
        "whole: sending them again pays for at most 2 image(s) twice (34.4 CU)" in caplog.text
    )
    assert read_status(tmp_path).risk.jobs == 0


@pytest.mark.parametrize("dialect", ["spec", "docs", "map"])
async def test_the_runner_understands_every_answer_shape_krea_has_shown(
    tmp_path: Path, dialect: str
) -> None:
    """POST answers without status, nextCursor, result.urls as objects or a map; with lost
    answers, so that the listing is read too."""
    config = EmulatorConfig(latency=QUICK, dialect=dialect, reset_after_create=0.4, seed=3)
    async with in_process(config) as emu:
        result = await run_batch(small_manifest(16), tmp_path, **emu.run_args(), options=FAST)
        records = check_folder(tmp_path, 16, emu.emulator)
        assert emu.emulator.stats["resets_after_create"] > 0  # 0.6**16: one run in 3,500
    assert result.exit_code == 0
    assert {r["status"] for r in records} == {"completed"}
