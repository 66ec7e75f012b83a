"""Log lines: -v adds ours and no other library's; terminal times in ISO dates; JSON lines
carry their figures as fields."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from PIL import Image
from rich.console import Console

from runner.cli import main
from runner.cli.logs import configure_logging
from runner.cli.progress import Progress
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.state.figures import Counts, stats_of
from runner.state.ledger import RunLedger
from tests.conftest import ROOT
from tests.engine_helpers import manifest_text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    configure_logging()
    logging.getLogger("runner").setLevel(logging.NOTSET)


def test_verbose_adds_our_debug_lines_and_no_other_librarys(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(verbose=True)
    logging.getLogger("runner.engine.engine").debug("→ submitted abc")
    Image.new("RGB", (4, 4)).save(buffer := io.BytesIO(), "PNG")
    Image.open(io.BytesIO(buffer.getvalue())).load()  # Pillow logs STREAM b'IHDR' at DEBUG
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    err = capsys.readouterr().err
    assert "→ submitted abc" in err
    assert "STREAM" not in err, err
    assert "selector" not in err, err


def test_a_terminal_stamps_log_lines_with_iso_dates(restore_logging: None) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    configure_logging(console=console)
    logging.getLogger("runner.batch").info("using the built-in emulator")
    line = screen.getvalue().splitlines()[0]
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] INFO", line), line


def test_json_lines_carry_a_records_extra_figures_as_fields(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(fmt="json")
    logging.getLogger("runner.cli").info("progress: 3 done", extra={"done": 3, "eta": None})
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (entry["msg"], entry["done"], entry["eta"]) == ("progress: 3 done", 3, None)


def test_a_progress_line_in_json_has_its_counts_as_numbers(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(fmt="json")
    stats = stats_of(Counts(total=61, completed=20, spend_usd=0.6), started=0.0, now=100.0)
    engine = SimpleNamespace(stats=lambda: stats, ledger=RunLedger())
    Progress(live=False, interval=0)(engine)  # type: ignore[arg-type]
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["msg"].startswith("progress: 20 done")
    assert (entry["done"], entry["total"], entry["queued"]) == (20, 61, 41)
    assert (entry["eta_seconds"], entry["spend_usd"]) == (205.0, 0.6)


async def test_with_json_logs_every_line_a_run_prints_is_json(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(3))
    argv = ["--log-format", "json", "run", str(manifest), "--out", str(tmp_path / "out")]
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        argv += ["--api-base", emu.url, "--budget", "35cu"]  # two of the three jobs fit
        done = await anyio.run_process(
            [sys.executable, "-m", "runner", *argv],
            check=False,
            cwd=ROOT,
            env={**os.environ, "KREA_API_TOKEN": "t"},
        )
    assert done.returncode == 3, done.stderr.decode()
    printed = [json.loads(line) for line in done.stdout.decode().splitlines()]
    said = [json.loads(line) for line in done.stderr.decode().splitlines()]  # no plain line
    [summary] = printed
    assert summary["event"] == "finished"
    assert (summary["completed"], summary["unfinished"], summary["exit_code"]) == (2, 1, 3)
    assert summary["spend_units"] == pytest.approx(34.4)
    [stopped] = [entry for entry in said if entry.get("event") == "stopped"]
    assert stopped["level"] == "warning"
    assert "budget reached: 1 job not submitted" in stopped["msg"]


def test_with_json_logs_mistakes_are_json_lines_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, restore_logging: None
) -> None:
    assert main(["--log-format", "json", "plan", str(tmp_path / "nothing.yaml")]) == 2
    entry = json.loads(capsys.readouterr().err)
    assert (entry["level"], entry["exit_code"]) == ("error", 2)
    assert "no such file" in entry["msg"]
    with pytest.raises(SystemExit) as stopped:
        main(["run", "jobs.yaml", "--log-format=json", "--retry-failde"])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "--retry-failde" in json.loads(line)["msg"]
