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
    assert "(the next run checks them)" in shown


def test_during_a_live_run_open_jobs_are_the_running_processes_to_settle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _unanswered_submit(tmp_path)
    _status_file(tmp_path, os.getpid())  # this process: alive
    assert main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert f"running now (pid {os.getpid()}" in shown
    assert "(the running process checks them)" in shown
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
