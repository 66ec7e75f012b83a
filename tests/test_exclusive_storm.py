"""A kill storm on an exclusive account, end to end: POSTs in parallel behind a round trip,
the runner killed as they travel, and each rerun cancels the lost POSTs' jobs before they
complete, then sends those jobs again once. Nothing is left ambiguous, each job is paid once.

Jobs here take longer than a rerun needs to start (as Krea's do: seconds to a minute); a
candidate that completes before the rerun can cancel it cannot be told apart, and stays
ambiguous (``test_exclusive``)."""

from __future__ import annotations

import random
from pathlib import Path

from runner.emulator import EmulatorConfig, Latency, run_emulator
from tests.engine_helpers import check_folder, manifest_text
from tests.test_resume import kill_at, run_to_end

JOBS = 64
KILLS = 4
EXCLUSIVE = ("--exclusive-account",)


async def test_a_kill_storm_on_an_exclusive_account_ends_with_every_job_paid_once(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "jobs.yaml"
    text = manifest_text(JOBS, concurrency=32, poll_interval=0.2, submit_concurrency=16)
    manifest.write_text(text)
    out = tmp_path / "out"
    config = EmulatorConfig(latency=Latency.parse("uniform:6-8"), rtt=0.05, seed=3)
    moments = random.Random(7)
    async with run_emulator(config) as emu:
        for _ in range(KILLS):
            await kill_at(emu, "submit", moments.randint(4, 12), manifest, out, EXCLUSIVE)
        code, stderr = await run_to_end(emu, manifest, out, EXCLUSIVE)
        records = check_folder(out, JOBS, emu.emulator)
        stats = emu.emulator.snapshot()
    assert stats["cancels"] > 0, "no lost POST's job was cancelled: the storm proved nothing"
    assert [r for r in records if r["status"] != "completed"] == [], stderr
    assert code == 0, stderr
    assert stats["paid"] == JOBS, "a job was paid for twice, or a candidate beside it"
    assert stats["paid_twice"] == 0
