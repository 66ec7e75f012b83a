"""Jobs that say who they are: with webhooks, each submit's address carries its job's key
(signed with the folder's secret), so a job whose POST's answer was lost names its key when
it ends, and is adopted instead of left ambiguous. In-process, on virtual time: the emulator's
deliveries are handed to the run's receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner import run_batch
from runner.api.webhooks import WebhookSettings
from runner.emulator import EmulatorConfig, Latency
from runner.state.events import Submitted
from runner.state.journal import read_events
from tests.engine_helpers import FAST, check_folder, small_manifest
from tests.in_process import in_process

CONFIG = EmulatorConfig(latency=Latency.parse("uniform:3-5"), reset_after_create=0.1, seed=5)
HOOKS = WebhookSettings("https://hooks.example.com/krea", "127.0.0.1", 9)
JOBS = 40


async def _run(out: Path, webhooks: bool) -> tuple[Any, dict[str, Any]]:
    async with in_process(CONFIG, rtt=0.15) as emu:
        result = await run_batch(
            small_manifest(JOBS, concurrency=16, poll_interval=0.5, webhook_poll_interval=30),
            out,
            **emu.run_args(),
            options=FAST,
            webhook=HOOKS if webhooks else None,
        )
        check_folder(out, JOBS, emu.emulator)
        return result, emu.emulator.snapshot()


async def test_lost_answers_are_adopted_when_their_jobs_name_their_keys(tmp_path: Path) -> None:
    without, _ = await _run(tmp_path / "polls", webhooks=False)
    result, stats = await _run(tmp_path / "webhooks", webhooks=True)
    assert without.counts.ambiguous_jobs > 0, "no answer was lost among others: proves nothing"
    assert result.counts.lost_answers > 0
    assert result.counts.ambiguous_jobs == 0, result.summary["counts"]
    assert result.counts.completed == JOBS
    assert stats["paid"] == JOBS
    assert stats.get("cancels", 0) == 0, "nothing cancelled: the account is not declared ours"
    lines = [e for _, e in read_events(tmp_path / "webhooks" / ".krea-batch" / "journal.jsonl")]
    assert any(isinstance(e, Submitted) and e.adopted for e in lines)
