"""Overnight runs: deadline, budget, JSON logs, and the notification at the end."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from runner.batch import run_batch
from runner.cli.logs import configure_logging
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.engine import Engine
from runner.manifest import parse_manifest
from runner.settings import parse_deadline
from tests.engine_helpers import (
    FAST,
    check_folder,
    manifest_text,
    read_results,
    small_manifest,
)
from tests.http_helpers import receiver
from tests.in_process import in_process


async def test_at_the_deadline_it_stops_submitting_drains_and_exits_3(tmp_path: Path) -> None:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.3"))) as emu:
        options = dataclasses.replace(FAST, deadline=time.time() + 1.0)  # 12 jobs need ~2 s
        result = await run_batch(
            small_manifest(12, concurrency=2),
            tmp_path,
            api_base=emu.url,
            token="t",
            options=options,
        )
        assert result.exit_code == 3
        assert result.stopped == "--deadline reached"
        first = read_results(tmp_path)
        assert 2 <= len(first) < 12
        assert {r["status"] for r in first} == {"completed"}  # jobs in flight were drained
        assert emu.emulator.stats["submits"] == len(first)
        again = await run_batch(
            small_manifest(12, concurrency=2), tmp_path, api_base=emu.url, token="t", options=FAST
        )
        assert again.exit_code == 0
        check_folder(tmp_path, 12, emu.emulator)
        assert emu.emulator.stats["submits"] == 12


async def test_a_deadline_after_the_last_submit_that_leaves_nothing_undone_exits_0(
    tmp_path: Path,
) -> None:
    """The deadline stops submitting; when every job was sent already and the drain
    brings each to its end, the run did not stop early: no "run again", exit 0."""
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:2"))) as emu:
        deadline = emu.clock.time() + 1.0  # after the 3 submits, before any job ends
        options = dataclasses.replace(FAST, deadline=deadline, deadline_flag="--max-runtime")
        result = await run_batch(small_manifest(3), tmp_path, **emu.via, token="t", options=options)
    assert result.counts.completed == 3
    assert result.stopped is None
    assert result.exit_code == 0


async def test_the_budget_is_never_exceeded(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        options = dataclasses.replace(FAST, budget=3 * 17.2 + 1, budget_unit="cu")  # 17.2 CU a job
        result = await run_batch(small_manifest(6), tmp_path, **emu.via, token="t", options=options)
        assert emu.emulator.stats["submits"] == 3
    assert result.counts.over_budget == 3
    assert result.exit_code == 3
    assert result.summary["estimated_spend_units"] == pytest.approx(3 * 17.2)
    assert result.stopped == "budget reached: 3 jobs not submitted"


async def test_one_job_over_the_budget_is_said_as_one_job(tmp_path: Path) -> None:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        options = dataclasses.replace(FAST, budget=2 * 17.2 + 1, budget_unit="cu")
        result = await run_batch(
            small_manifest(3), tmp_path, api_base=emu.url, token="t", options=options
        )
    assert result.stopped == "budget reached: 1 job not submitted"


async def test_a_dollar_budget_covers_a_model_priced_in_the_manifest(tmp_path: Path) -> None:
    """seedream-4 has no published USD price: the manifest's `prices:` gives it one."""
    text = "prices: {seedream-4: 0.05}\n" + manifest_text(6)
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        options = dataclasses.replace(FAST, budget=0.16)  # dollars: three jobs fit
        result = await run_batch(
            parse_manifest(text), tmp_path, **emu.via, token="t", options=options
        )
        assert emu.emulator.stats["submits"] == 3
    assert result.counts.over_budget == 3
    assert result.summary["estimated_spend_usd"] == pytest.approx(0.15)
    assert result.summary["estimated_spend_units"] == 0
    assert {r.get("cost_usd") for r in read_results(tmp_path) if r["status"] == "completed"} == {
        0.05
    }


async def test_a_dollar_budget_refuses_a_model_without_a_usd_price(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner")
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        options = dataclasses.replace(FAST, budget=100.0)
        result = await run_batch(small_manifest(2), tmp_path, **emu.via, token="t", options=options)
        assert emu.emulator.stats.get("submits", 0) == 0
    assert (result.counts.unpriced, result.counts.over_budget) == (2, 0)
    said = [r.getMessage() for r in caplog.records if "no published USD price" in r.getMessage()]
    assert len(said) == 1, "said once, not once a job"
    assert said[0].startswith("--budget is in dollars and seedream-4 (2 jobs) has no published")
    assert "prices: {seedream-4: 0.05}" in said[0]
    assert result.stopped == "2 jobs not submitted: --budget cannot price their model"


async def test_failed_jobs_give_their_budget_back(tmp_path: Path) -> None:
    async with in_process(
        EmulatorConfig(latency=Latency.parse("fixed:0.05"), failure_rate=1.0)
    ) as emu:
        options = dataclasses.replace(FAST, budget=17.2 + 1, budget_unit="cu")
        result = await run_batch(
            small_manifest(3, max_attempts=1, concurrency=1),
            tmp_path,
            **emu.via,
            token="t",
            options=options,
        )
        assert emu.emulator.stats["submits"] == 3  # each failure refunds its 17.2 CU
    assert result.counts.over_budget == 0


async def test_the_summary_is_posted_to_the_notify_url(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"))
    async with receiver() as hook, in_process(config) as emu:
        await run_batch(
            small_manifest(2),
            tmp_path,
            **emu.via,
            token="secret",
            options=FAST,
            notify_url=hook.url,
        )
    [summary] = hook.bodies
    assert summary["counts"]["completed"] == 2
    assert "secret" not in json.dumps(summary)


async def test_an_unreachable_notify_url_does_not_fail_the_run(tmp_path: Path) -> None:
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        result = await run_batch(
            small_manifest(1),
            tmp_path,
            **emu.via,
            token="t",
            options=FAST,
            notify_url="http://127.0.0.1:9/nothing",
        )
    assert result.exit_code == 0


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json")
    try:
        logging.getLogger("runner.engine").warning("! failed %s: %s", "abc", "moderation")
    finally:
        configure_logging()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "runner.engine"
    assert entry["msg"] == "! failed abc: moderation"


def test_deadlines_as_a_time_of_day_or_an_iso_time() -> None:
    now = datetime(2026, 11, 24, 22, 0).astimezone()
    morning = datetime.fromtimestamp(parse_deadline("06:30", now)).astimezone()
    assert (morning - now) == timedelta(hours=8, minutes=30)
    assert parse_deadline("23:15", now) - now.timestamp() == 75 * 60
    assert parse_deadline("2026-11-25T06:00", now) > now.timestamp()
    with pytest.raises(ValueError, match="already passed"):
        parse_deadline("2026-11-24T21:00", now)
    with pytest.raises(ValueError, match="not a"):
        parse_deadline("tomorrow", now)


def test_the_cli_refuses_a_bad_deadline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from runner.cli import main

    path = tmp_path / "jobs.yaml"
    path.write_text("version: 1\njobs:\n  - {prompt: a, model: flux}\n")
    assert main(["run", str(path), "--emulator", "--deadline", "25:00"]) == 2
    assert "not a time of day" in capsys.readouterr().err


def test_max_runtime_and_deadline_take_the_earlier() -> None:
    from runner.cli.main import _deadline

    now = time.time()
    soon, flag = _deadline(None, "90m")
    assert soon is not None
    assert flag == "--max-runtime"
    assert 90 * 60 - 5 < soon - now <= 90 * 60 + 5
    both, flag = _deadline("2099-01-01T00:00", "1h")
    assert both is not None
    assert flag == "--max-runtime"
    assert both - now <= 3600 + 5
    in_ten = time.strftime("%H:%M", time.localtime(now + 600))
    earlier, flag = _deadline(in_ten, "1h")
    assert earlier is not None
    assert earlier - now <= 600
    assert flag == "--deadline"
    assert _deadline(None, None) == (None, "--deadline")


async def test_a_rerun_of_a_finished_folder_leaves_its_files_as_they_are(tmp_path: Path) -> None:
    """Nothing new finished: results, metadata and report are not written again. Metadata
    and report are when the journal is newer than them (a run stopped before its finishing
    stage); results.jsonl only when it disagrees with the journal."""
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        url = emu.url
        await run_batch(small_manifest(4), tmp_path, api_base=url, token="t", options=FAST)
        results = tmp_path / "results.jsonl"
        metadata = tmp_path / "metadata.jsonl"
        written, described = results.stat().st_mtime_ns, metadata.stat().st_mtime_ns
        shots: list[tuple[int, int]] = []

        def look(engine: Engine) -> None:
            stats = engine.stats()
            shots.append((stats.done, stats.counts.total))

        again = await run_batch(
            small_manifest(4),
            tmp_path,
            api_base=url,
            token="t",
            options=FAST,
            on_progress=look,
        )
        assert again.counts.skipped == 4
        assert shots[0] == (4, 4), "jobs finished earlier count as done from the first look"
        assert results.stat().st_mtime_ns == written
        assert metadata.stat().st_mtime_ns == described
        assert json.loads((tmp_path / "summary.json").read_text())["results_records"] == 4
        journal = tmp_path / ".krea-batch" / "journal.jsonl"
        later = written + 5_000_000_000
        os.utime(journal, ns=(later, later))
        await run_batch(small_manifest(4), tmp_path, api_base=url, token="t", options=FAST)
        assert metadata.stat().st_mtime_ns != described
        assert results.stat().st_mtime_ns == written, "it agrees with the journal: kept"
        lines = results.read_text().splitlines()
        results.write_text("\n".join(lines[:3]) + "\n")  # a line lost between two writes
        await run_batch(small_manifest(4), tmp_path, api_base=url, token="t", options=FAST)
    assert len(read_results(tmp_path)) == 4
