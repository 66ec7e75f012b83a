"""The live view at any size: the total and the figures always on screen, phrases whole,
and a resumed run's spend counted with the jobs done before it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console

from runner.batch import run_batch
from runner.cli.closing import summary_line
from runner.cli.live_view import Bars
from runner.cli.progress import Progress
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.engine import Engine
from runner.wording import wrap_phrases
from tests.engine_helpers import FAST, small_manifest

FIGURES = ["2.71 jobs/s", "ETA 3m25s", "$0.06 + 618.4 CU", "0 failed", "8 in flight", "0 429s"]


def _frame(bars: Bars, console: Console) -> list[str]:
    console.print(bars.get_renderable())
    return console.export_text().splitlines()


def _bars(width: int, height: int) -> tuple[Bars, Console]:
    console = Console(file=io.StringIO(), width=width, height=height, record=True)
    return Bars(console), console


def test_with_more_models_than_rows_the_total_and_figures_stay_on_screen() -> None:
    bars, console = _bars(80, 12)
    rows = {f"model-{i:02d}": (i % 3, 2) for i in range(20)}  # a third still running
    bars.show({**rows, "total": (20, 40)}, [FIGURES])
    lines = _frame(bars, console)
    assert len(lines) <= 12, "\n".join(lines)
    assert lines[-2].startswith("total"), "\n".join(lines)
    assert "20/40" in lines[-2]
    assert lines[-1].startswith("2.71 jobs/s · ETA 3m25s"), "\n".join(lines)
    [more] = [line for line in lines if line.startswith("+")]
    assert more.startswith("+12 more models"), more  # 8 models, the fold and the total
    shown = [line.split()[0] for line in lines[:-3]]
    assert all(int(rows[name][0]) < 2 for name in shown), "running models come first"


@pytest.mark.parametrize("width", [40, 60, 80])
def test_the_figures_break_between_phrases_never_inside_one(width: int) -> None:
    bars, console = _bars(width, 30)
    bars.show({"flux-1-dev": (1, 4), "total": (1, 4)}, [FIGURES])
    text = "\n".join(_frame(bars, console)[2:])
    for phrase in FIGURES:
        assert any(phrase in line for line in text.splitlines()), f"{phrase!r} cut:\n{text}"


def test_the_closing_lines_break_between_phrases_at_the_terminals_width() -> None:
    summary = "25 completed, 0 failed, 0 already done, 0 unfinished; estimated spend $0.06"
    lines = wrap_phrases(summary, 60).splitlines()
    assert lines == [
        "25 completed, 0 failed, 0 already done, 0 unfinished;",
        "estimated spend $0.06",
    ]


async def test_a_resumed_runs_spend_counts_the_jobs_done_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        await run_batch(small_manifest(3), tmp_path, api_base=emu.url, token="t", options=FAST)
        caplog.set_level(logging.INFO, logger="runner.cli.progress")
        progress = Progress(live=False, interval=0)
        seen: list[Engine] = []
        result = await run_batch(
            small_manifest(4),
            tmp_path,
            api_base=emu.url,
            token="t",
            options=FAST,
            on_progress=lambda engine: (progress(engine), seen.append(engine)),
        )
    progress(seen[-1])  # the figures once the run is over
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert said[0].startswith("progress: 3 done"), said[0]  # 3 × 17.2 CU done before it
    assert "spend 51.6 CU ($0 this run)" in said[0], said[0]
    assert "spend 68.8 CU (17.2 CU this run)" in said[-1], said[-1]
    closing = summary_line(result, str(tmp_path), sharded=False).text  # says the same
    assert "this run's estimated spend 17.2 CU (folder total 68.8 CU)" in closing, closing
