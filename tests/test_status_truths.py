"""`status` says what is true: a killed run is not running, a live run settles its own open
jobs, a stopped run's unsent jobs are counted, --refresh asks the API the folder was made on."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from runner.batch import run_batch
from runner.cli import main
from runner.cli.status import read_status, render_status
from runner.emulator import EmulatorConfig, Latency, run_emulator
from tests.engine_helpers import FAST, small_manifest


def _status_file(folder: Path, pid: int, **extra: object) -> None:
    status = {
        "state": "running",
        "pid": pid,
        "host": socket.gethostname(),
        "heartbeat": time.time(),
        "heartbeat_at": "2026-12-05T06:00:00.000Z",
        "jobs_per_second": 1.0,
        "eta_seconds": 30.0,
        **extra,
    }
    (folder / "status.json").write_text(json.dumps(status))


def _unanswered_submit(folder: Path) -> None:
    (folder / ".krea-batch").mkdir(parents=True, exist_ok=True)
    line = {"e": "submitting", "k": "feedfacefeedface", "a": 1, "t": time.time()}
    (folder / ".krea-batch" / "journal.jsonl").write_text(json.dumps(line) + "\n")


def test_a_run_killed_with_kill_9_is_not_shown_as_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _unanswered_submit(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its last heartbeat is fresh, but the process is no more
    _status_file(tmp_path, gone.pid)
    assert main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "running now" not in shown
    assert f"the last run (pid {gone.pid}) did not finish" in shown
    assert "run the same command again to resume" in shown
    assert "1 submitted without an answer (the next run checks it)" in shown


def test_during_a_live_run_open_jobs_are_the_running_processes_to_settle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _unanswered_submit(tmp_path)
    _status_file(tmp_path, os.getpid())  # this process: alive
    assert main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert f"running now (pid {os.getpid()}" in shown
    assert "(the running process checks it)" in shown
    assert "the next run" not in shown


async def test_a_budget_stop_counts_the_jobs_never_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        options = dataclasses.replace(FAST, budget=2 * 17.2 + 1, budget_unit="cu")
        await run_batch(small_manifest(6), tmp_path, api_base=emu.url, token="t", options=options)
    assert main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert f"{tmp_path}: 2 completed, 0 failed, 4 jobs not sent yet" in shown
    assert "the last run stopped early: budget reached: 4 jobs not submitted" in shown
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["not_sent"] == 4


async def test_refresh_asks_the_api_the_folder_was_made_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KREA_API_TOKEN", raising=False)  # a server on this machine needs none
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:600"))) as emu:
        options = dataclasses.replace(FAST, deadline=None)
        manifest = small_manifest(1, job_timeout=600)
        with anyio.move_on_after(1.0):  # killed mid-poll: no summary.json, only status.json
            await run_batch(manifest, tmp_path, api_base=emu.url, token="t", options=options)
        assert not (tmp_path / "summary.json").exists()
        polls = emu.emulator.stats.get("polls", 0)
        code = await anyio.to_thread.run_sync(
            main, ["status", str(tmp_path), "--refresh", "--json"]
        )
        assert emu.emulator.stats.get("polls", 0) > polls, "the emulator was asked"
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["asked"] == emu.url
    [job] = data["in_flight"]
    assert job["remote_status"] in ("queued", "scheduled", "processing")


def _in_flight(folder: Path, jobs: dict[str, str]) -> None:
    """A journal whose jobs (key → remote job id) were submitted and never collected."""
    (folder / ".krea-batch").mkdir(parents=True, exist_ok=True)
    lines = [{"e": "submitted", "k": key, "a": 1, "id": job} for key, job in jobs.items()]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / ".krea-batch" / "journal.jsonl").write_text(text)


async def test_a_job_the_api_has_completed_is_not_said_to_be_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KREA_API_TOKEN", raising=False)
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0"))) as emu:
        model = emu.emulator.catalog.resolve("seedream-4")
        job = emu.emulator.store.create(model, {"prompt": "a fox"}, None)  # done at once
        _in_flight(tmp_path, {"feedfacefeedface": job.id})
        assert await anyio.to_thread.run_sync(main, ["status", str(tmp_path)]) == 0
        offline = capsys.readouterr().out
        argv = ["status", str(tmp_path), "--refresh", "--api-base", emu.url]
        assert await anyio.to_thread.run_sync(main, argv) == 0
    asked = capsys.readouterr().out
    assert "1 in flight, not collected yet (--refresh asks the API how it stands)" in offline
    assert "1 completed at the API, not downloaded yet: the next run downloads it" in asked
    assert "still running" not in offline + asked


def test_refreshed_jobs_are_told_apart_by_where_the_api_says_they_stand(tmp_path: Path) -> None:
    ids = {f"k{n}": f"job-{n}" for n in range(6)}
    _in_flight(tmp_path, ids)
    status = read_status(tmp_path)
    answers = ["completed", "completed", "processing", "failed", "cancelled", "unknown (502)"]
    status.remote_status = dict(zip(ids.values(), answers, strict=True))
    status.asked = "http://127.0.0.1:1"
    status.live = True
    shown = render_status(status).splitlines()[0]
    assert "2 completed at the API, not downloaded yet: the running process downloads them" in shown
    assert "1 still running at the API" in shown
    assert "1 failed at the API: the running process retries it or records the failure" in shown
    assert "1 cancelled at the API: the running process records it failed" in shown
    assert "1 in flight, not collected yet (the API could not say how it stands)" in shown
