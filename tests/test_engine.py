"""The engine end to end against the emulator over real sockets."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.engine import EngineOptions
from runner.manifest import parse_manifest

FAST = EngineOptions(handle_signals=False, backoff_scale=0.001, reconcile_delay=0.01)


def manifest(jobs: int = 20, **run: Any) -> Any:
    settings = {"concurrency": 8, "rate_limit": 1000, "poll_interval": 0.02, **run}
    text = textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: a tiny test image
            model: flux-1-dev
            sizes: [512x512]
            seeds: {list(range(jobs))}
        run: {json.dumps(settings)}
    """)
    return parse_manifest(text)


def results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


async def test_a_batch_completes_with_verified_files_and_one_submit_per_job(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"))
    async with run_emulator(config) as emu:
        result = await run_batch(manifest(20), tmp_path, api_base=emu.url, token="t", options=FAST)
        stats = emu.emulator.snapshot()
    assert result.exit_code == 0, result.summary
    records = results(tmp_path)
    assert len(records) == 20
    for record in records:
        assert record["status"] == "completed"
        [entry] = record["files"]
        data = (tmp_path / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    assert stats["submits"] == 20
    assert stats["duplicate_submits"] == 0
