"""Crash safety: kill -9 the runner at chosen moments, rerun, check nothing lost or paid twice."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, Latency, RunningEmulator, run_emulator
from tests.conftest import ROOT
from tests.engine_helpers import FAST, check_folder, manifest_text, read_results

JOBS = 8


async def start_runner(
    manifest: Path, out: Path, url: str, extra: tuple[str, ...] = ()
) -> asyncio.subprocess.Process:
    """The CLI's ``run`` in a child process (``extra``: more flags)."""
    env = {**os.environ, "KREA_API_TOKEN": "secret-token-do-not-leak"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--api-base",
        url,
        *extra,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def kill_at(
    emu: RunningEmulator,
    event: str,
    nth: int,
    manifest: Path,
    out: Path,
    extra: tuple[str, ...] = (),
) -> None:
    """Run the CLI and SIGKILL it when the emulator sees its ``nth`` request of kind ``event``."""
    seen = 0
    moment = asyncio.Event()

    def watch(kind: str, job: Any) -> None:
        nonlocal seen
        if kind == event:
            seen += 1
            if seen == nth:
                moment.set()

    emu.emulator.observers.append(watch)
    process = await start_runner(manifest, out, emu.url, extra)
    waiter = asyncio.create_task(moment.wait())
    finished = asyncio.create_task(process.wait())
    done, _ = await asyncio.wait(
        {waiter, finished}, timeout=60, return_when=asyncio.FIRST_COMPLETED
    )
    assert waiter in done, "the run ended before the moment to kill it"
    process.kill()
    await process.wait()
    finished.cancel()
    emu.emulator.observers.remove(watch)


async def run_to_end(
    emu: RunningEmulator, manifest: Path, out: Path, extra: tuple[str, ...] = ()
) -> tuple[int, str]:
    process = await start_runner(manifest, out, emu.url, extra)
    _, stderr = await asyncio.wait_for(process.communicate(), 90)
    return process.returncode or 0, stderr.decode()


@pytest.mark.parametrize("posts", [1, 16])
@pytest.mark.parametrize(
    ("event", "nth"),
    [("submit", 1), ("submit", 5), ("list", 6), ("download", 1), ("download", 4)],
)
async def test_kill_9_then_rerun_loses_nothing_and_pays_nothing_twice(
    tmp_path: Path, event: str, nth: int, posts: int
) -> None:
    """One POST in flight at a time: every job completes. Several: a crash may leave POSTs
    that no listing can tell apart; those end ambiguous, never sent again, never lost."""
    manifest = tmp_path / "jobs.yaml"
    text = manifest_text(JOBS, concurrency=4, poll_interval=0.05, submit_concurrency=posts)
    manifest.write_text(text.replace("128x128", "512x512"))
    out = tmp_path / "out"
    config = EmulatorConfig(latency=Latency.parse("fixed:0.3"), download_bytes_per_s=150_000.0)
    async with run_emulator(config) as emu:
        await kill_at(emu, event, nth, manifest, out)
        code, stderr = await run_to_end(emu, manifest, out)
        stats = emu.emulator.snapshot()
        records = check_folder(out, JOBS, emu.emulator)
    assert stats["duplicate_submits"] == 0
    statuses = {r["status"] for r in records}
    if posts == 1 or statuses == {"completed"}:
        assert code == 0, stderr
        assert statuses == {"completed"}
        assert stats["submits"] == JOBS
    else:
        assert code == 1, stderr
        assert statuses == {"completed", "ambiguous"}
        assert stats["submits"] <= JOBS
    for path in out.rglob("*"):
        if path.is_file():
            assert b"secret-token-do-not-leak" not in path.read_bytes(), path
    assert "secret-token-do-not-leak" not in stderr


async def test_sigterm_drains_jobs_in_flight_and_exits_3_then_resumes(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(JOBS, concurrency=2, poll_interval=0.05))
    out = tmp_path / "out"
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.5"))) as emu:
        second_submit = asyncio.Event()
        emu.emulator.observers.append(
            lambda kind, job: second_submit.set() if emu.emulator.stats["submits"] >= 2 else None
        )
        process = await start_runner(manifest, out, emu.url)
        await asyncio.wait_for(second_submit.wait(), 30)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 3, stderr.decode()
        first = read_results(out)
        assert 2 <= len(first) < JOBS  # the two in flight finished; the rest never started
        assert {r["status"] for r in first} == {"completed"}
        code, stderr_text = await run_to_end(emu, manifest, out)
        assert code == 0, stderr_text
        check_folder(out, JOBS, emu.emulator)
        assert emu.emulator.stats["submits"] == JOBS


async def test_a_second_signal_stops_at_once_and_the_folder_still_resumes(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(4, concurrency=4, poll_interval=0.05))
    out = tmp_path / "out"
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:30"))) as emu:
        all_in = asyncio.Event()
        emu.emulator.observers.append(
            lambda kind, job: all_in.set() if emu.emulator.stats["submits"] >= 4 else None
        )
        process = await start_runner(manifest, out, emu.url)
        await asyncio.wait_for(all_in.wait(), 30)
        process.send_signal(signal.SIGINT)
        # Signals sent back to back can merge into one: send the second once the first is seen.
        assert process.stderr is not None
        while b"stopping (interrupted" not in await asyncio.wait_for(process.stderr.readline(), 20):
            pass
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 3, stderr.decode()
        assert read_results(out) == []
        for job in emu.emulator.store.jobs.values():
            job.duration = 0.0  # let the remote jobs finish now
        code, stderr_text = await run_to_end(emu, manifest, out)
        assert code == 0, stderr_text
        check_folder(out, 4, emu.emulator)
        assert emu.emulator.stats["submits"] == 4


OLD_FOLDER = ROOT / "tests" / "data" / "folder_from_a67a27b"  # written by krea-batch at a67a27b


def _old_folder(tmp_path: Path, crash_before_answer: str | None = None) -> Path:
    """A copy of the folder an older version wrote; with ``crash_before_answer``, cut as if that
    job's POST had gone out and the run died before its answer."""
    out = tmp_path / "out"
    shutil.copytree(OLD_FOLDER, out, ignore=shutil.ignore_patterns("jobs.yaml"))
    if crash_before_answer is not None:
        journal = out / ".krea-batch" / "journal.jsonl"
        lines = journal.read_text().splitlines(keepends=True)
        kept = [
            line
            for line in lines
            if json.loads(line)["k"] != crash_before_answer or json.loads(line)["e"] == "submitting"
        ]
        journal.write_text("".join(kept))
        results = out / "results.jsonl"
        rows = results.read_text().splitlines(keepends=True)
        results.write_text("".join(r for r in rows if json.loads(r)["key"] != crash_before_answer))
        (out / "images" / f"{crash_before_answer}.png").unlink()
    return out


async def test_a_folder_written_before_the_typed_events_resumes_without_paying_again(
    tmp_path: Path,
) -> None:
    out = _old_folder(tmp_path)
    async with run_emulator(EmulatorConfig(latency=Latency(0.05, 0.05))) as emu:
        result = await run_batch(
            OLD_FOLDER / "jobs.yaml", out, api_base=emu.url, token="t", options=FAST
        )
        assert emu.emulator.snapshot().get("submits", 0) == 0
    assert (result.counts.skipped, result.counts.completed) == (4, 0)
    assert result.exit_code == 0


async def test_an_old_folder_cut_mid_submit_checks_the_listing_and_sends_once(
    tmp_path: Path,
) -> None:
    lost = "cd9c5aa713583b25"
    out = _old_folder(tmp_path, crash_before_answer=lost)
    async with run_emulator(EmulatorConfig(latency=Latency(0.05, 0.05))) as emu:
        result = await run_batch(
            OLD_FOLDER / "jobs.yaml", out, api_base=emu.url, token="t", options=FAST
        )
        stats = emu.emulator.snapshot()
        # The old submitting line is read, its window searched, proven empty: sent once more.
        assert stats["submits"] == 1
        assert result.counts.resent == 1
        assert (result.counts.skipped, result.counts.completed) == (3, 1)
        check_folder(out, 4, emu.emulator)
    assert result.exit_code == 0
