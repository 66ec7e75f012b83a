"""status.json and the Prometheus textfile: fresh while a run goes on, read by `status`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency
from runner.engine import Engine
from runner.outputs.live import STALE_AFTER, read_live
from tests.engine_helpers import FAST, small_manifest
from tests.in_process import in_process


async def test_status_and_metrics_are_fresh_during_a_run_and_final_after(tmp_path: Path) -> None:
    out, metrics = tmp_path / "out", tmp_path / "krea.prom"
    seen: list[dict[str, object]] = []

    def look(engine: Engine) -> None:
        if engine.counts.submits >= 2 and not seen:
            seen.append(json.loads((out / "status.json").read_text()))
            seen.append({"prom": metrics.read_text()})

    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.6"))) as emu:
        await run_batch(
            small_manifest(4, concurrency=2),
            out,
            **emu.via,
            token="t",
            options=FAST,
            on_progress=look,
            metrics_file=metrics,
        )
    status, prom = seen
    assert status["state"] == "running"
    assert time.time() - float(status["heartbeat"]) < STALE_AFTER  # type: ignore[arg-type]
    assert status["total"] == 4
    families = {f.name: f for f in text_string_to_metric_families(str(prom["prom"]))}
    assert families["krea_batch_jobs_total"].samples[0].value == 4
    assert families["krea_batch_running"].samples[0].value == 1
    assert {s.labels["kind"] for s in families["krea_batch_errors"].samples} >= {"transient"}
    final = json.loads((out / "status.json").read_text())
    assert (final["state"], final["done"]) == ("finished", 4)
    assert read_live(out) is None  # a finished run is not shown as running


def test_status_shows_a_live_run_and_ignores_a_stale_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".krea-batch").mkdir()
    (tmp_path / ".krea-batch" / "journal.jsonl").write_text("")
    beat = time.time()
    status = {
        "state": "running",
        "pid": 4242,
        "heartbeat": beat,
        "heartbeat_at": "now",
        "done": 3,
        "total": 10,
        "in_flight": 2,
        "jobs_per_second": 0.5,
        "eta_seconds": 205.0,
    }
    (tmp_path / "status.json").write_text(json.dumps(status))
    assert main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "running now (pid 4242" in shown
    assert "ETA 3m25s" in shown, "the ETA in the words of the live view, not '205 s'"
    assert "3/10" not in shown, "counts come once, from the journal, not from two sources"
    assert read_live(tmp_path, now=beat + STALE_AFTER + 1) is None
