"""What a person sees on a real terminal: bars redrawn in place, log lines above them."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import anyio
import pyte
import pytest

from runner.emulator import EmulatorConfig, Latency, run_emulator
from tests.conftest import ROOT
from tests.engine_helpers import manifest_text

COLUMNS, LINES = 150, 40


def _run_in_a_terminal(
    manifest: Path, out: Path, url: str, columns: int = COLUMNS, *flags: str
) -> tuple[int, bytes]:
    """Run the CLI on a pseudo-terminal of COLUMNS×40; returns its exit code and every byte."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, columns, 0, 0))
    env = {**os.environ, "KREA_API_TOKEN": "t", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--out", str(out), *flags]
    process = subprocess.Popen(
        [*command, "--api-base", url], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(60), b"".join(chunks)


async def test_the_live_view_stays_at_the_bottom_and_log_lines_scroll_above_it(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(12, concurrency=4, poll_interval=0.05))
    config = EmulatorConfig(latency=Latency.parse("fixed:0.3"))
    async with run_emulator(config) as emu:
        code, output = await anyio.to_thread.run_sync(
            _run_in_a_terminal, manifest, tmp_path / "out", emu.url, COLUMNS, "-v"
        )
    screen = pyte.HistoryScreen(COLUMNS, LINES, history=10_000)
    pyte.ByteStream(screen).feed(output)
    scrolled = ["".join(line[x].data for x in range(COLUMNS)) for line in screen.history.top]
    lines = [line.rstrip() for line in [*scrolled, *screen.display]]
    assert code == 0, "\n".join(lines)
    bars = [line for line in lines if line.lstrip().startswith(("total ", "seedream-4 "))]
    assert len(bars) == 2, "each bar is drawn once, in place:\n" + "\n".join(lines)
    assert "12/12" in bars[-1]
    assert "100%" in bars[-1]
    done = [line for line in lines if "← done" in line]
    assert len(done) == 12, "with -v, every per-job line printed whole, once:\n" + "\n".join(lines)
    assert lines.index(bars[0]) > max(lines.index(line) for line in done), "bars stay at the bottom"
    assert "12 completed, 0 failed" in "\n".join(lines)


def _screen(output: bytes, columns: int) -> list[str]:
    screen = pyte.HistoryScreen(columns, LINES, history=10_000)
    pyte.ByteStream(screen).feed(output)
    scrolled = ["".join(line[x].data for x in range(columns)) for line in screen.history.top]
    return [line.rstrip() for line in [*scrolled, *screen.display]]


@pytest.mark.parametrize("columns", [60, 80, 120])
async def test_the_live_view_reads_whole_at_any_width_with_no_line_per_job(
    tmp_path: Path, columns: int
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        textwrap.dedent("""
        version: 1
        jobs:
          - prompt: a tiny test image
            models: [seedream-4, imagen-4-fast]
            sizes: [512x512]
            seeds: [1, 2, 3]
        run: {concurrency: 4, poll_interval: 0.05, rate_limit: 1000, max_attempts: 1}
    """)
    )
    config = EmulatorConfig(latency=Latency.parse("fixed:0.2"), failure_rate=0.5, seed=3)
    async with run_emulator(config) as emu:
        code, output = await anyio.to_thread.run_sync(
            _run_in_a_terminal, manifest, tmp_path / "out", emu.url, columns
        )
    lines = _screen(output, columns)
    shown = "\n".join(lines)
    assert code == 1, shown  # some failed: counted in the view, listed by `status`
    assert "! failed" not in shown, "no line per failed job on a terminal without -v"
    for name, count in (("seedream-4", "3/3"), ("imagen-4-fast", "3/3"), ("total", "6/6")):
        rows = [line for line in lines if line.lstrip().startswith(name)]
        assert len(rows) == 1, f"{name}: drawn once, in place, at {columns} columns:\n{shown}"
        assert count in rows[0], f"{name}'s n/N at {columns} columns:\n{shown}"
    assert "ETA" in shown, shown
    assert "CU" in shown, shown
    assert "← done" not in shown, "no line per job without -v"
    assert "runner." not in shown, "no module paths without -v"


def _take_the_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty, so that a
    ^C typed there is echoed and signalled as a person's would be."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _run_and_press_ctrl_c(manifest: Path, out: Path, url: str, columns: int) -> tuple[int, bytes]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, columns, 0, 0))
    env = {**os.environ, "KREA_API_TOKEN": "t", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--api-base", url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env=env,
        preexec_fn=_take_the_terminal,
    )
    os.close(slave)
    chunks: list[bytes] = []
    pressed = False
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if not pressed and b"total" in b"".join(chunks):  # the bars are up: press Ctrl-C once
            os.write(master, b"\x03")
            pressed = True
    os.close(master)
    return process.wait(60), b"".join(chunks)


async def test_one_ctrl_c_drains_and_leaves_each_bar_once_with_no_eta(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(12, concurrency=4, poll_interval=0.05))
    config = EmulatorConfig(latency=Latency.parse("fixed:1.0"))
    async with run_emulator(config) as emu:
        code, output = await anyio.to_thread.run_sync(
            _run_and_press_ctrl_c, manifest, tmp_path / "out", emu.url, 80
        )
    lines = _screen(output, 80)
    shown = "\n".join(lines)
    assert code == 3, shown  # drained and stopped early: the next run resumes
    for name in ("seedream-4", "total"):
        rows = [line for line in lines if line.lstrip().startswith(name)]
        assert len(rows) == 1, f"{name} drawn once after a Ctrl-C:\n{shown}"
    assert "^C" not in shown, shown
    figures = [line for line in lines if "jobs/s" in line]
    assert figures, shown
    assert "ETA –" in figures[-1], "the final frame shows no ETA:\n" + shown
