"""Progress of a run: live bars on a terminal, periodic log lines otherwise (cron)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import termios
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

if TYPE_CHECKING:
    from runner.engine import Engine

from runner.money import spend_text
from runner.outputs.figures import RunStats

log = logging.getLogger("runner.cli.progress")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def figures_of(stats: RunStats) -> dict[str, float | int | str]:
    """The figures both displays show."""
    counts = stats.counts
    return {
        "done": stats.done,
        "failed": counts.failed + counts.ambiguous_jobs,
        "in_flight": stats.in_flight,
        "queued": max(0, counts.unfinished - stats.in_flight),
        "total": counts.total,
        "rate": stats.jobs_per_second,
        "eta": _eta(stats.eta_seconds),
        "spend": spend_text(counts.spend_usd, counts.spend_units),
        "requests": requests_text(stats.per_job),
        "rate_limited": stats.rate_limited,
        "keys": keys_text(stats),
    }


def keys_text(stats: RunStats) -> str:
    """A pool's keys, each by fingerprint: jobs in flight, done and spend, or why retired
    (empty for a run with one key)."""
    parts = []
    for name, key in stats.counts.by_account.items():
        if key.retired is not None:
            parts.append(f"{name} retired ({key.retired.split(': ', 1)[-1][:40]})")
        else:
            running = stats.running.get(name, 0)
            spend = spend_text(key.spend_usd, key.spend_units)
            parts.append(f"{name} {running} running {key.completed} done {spend}")
    return ("keys: " + " · ".join(parts)) if parts else ""


def requests_text(per_job: dict[str, float]) -> str:
    """``1.08 req/job (submit 1.00, list 0.05, job 0.03)``: API requests, downloads apart."""
    parts = ", ".join(
        f"{kind} {per_job[kind]:.2f}" for kind in ("submit", "list", "job") if per_job[kind]
    )
    return f"{per_job['api']:.2f} req/job" + (f" ({parts})" if parts else "")


class Progress:
    """Call it with the engine as often as you like; it shows what is due.

    On a terminal: rich progress bars, one per model and a total with rate, ETA, spend,
    failures, jobs in flight and 429s, redrawn in place at the bottom; log lines go through
    the same console (see ``console``), so they print above the bars instead of through them.
    Elsewhere (cron, a pipe): a log line every ``interval`` seconds.
    """

    def __init__(self, live: bool, interval: float = 30.0, console: Console | None = None) -> None:
        self.interval = interval
        self._last = 0.0
        self.console = console or Console(stderr=True)
        self._bars: _Bars | None = None
        self._tasks: dict[str, TaskID] = {}
        self._engine: Engine | None = None
        self._tty: tuple[int, list[Any]] | None = None
        if live:
            self._quiet_control_keys()
            self._bars = _Bars(
                # Any width: names give way first (cut with …), the bar takes what is left,
                # the counts are never cut; the run's figures wrap on lines of their own.
                TextColumn(
                    "{task.description}",
                    style="bold",
                    table_column=Column(no_wrap=True, overflow="ellipsis", max_width=22),
                ),
                BarColumn(bar_width=None),
                MofNCompleteColumn(table_column=Column(no_wrap=True)),
                TaskProgressColumn(table_column=Column(no_wrap=True)),
                console=self.console,
                refresh_per_second=4,
                expand=True,
            )
            self._bars.start()

    def __call__(self, engine: Engine) -> None:
        self._engine = engine
        stats = engine.stats()
        figures = figures_of(stats)
        if self._bars is not None:
            self._draw(self._bars, stats.counts.by_model, figures)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info(
                "progress: %(done)d done, %(failed)d failed, %(in_flight)d in flight, "
                "%(queued)d queued of %(total)d; %(rate).2f jobs/s, ETA %(eta)s, "
                "spend %(spend)s; %(requests)s%(keys_line)s",
                {**figures, "keys_line": f"; {figures['keys']}" if figures["keys"] else ""},
            )

    def _draw(
        self,
        bars: _Bars,
        by_model: dict[str, list[int]],
        figures: dict[str, float | int | str],
    ) -> None:
        ended = int(figures["done"]) + int(figures["failed"])
        rows = {**by_model, TOTAL: (ended, int(figures["total"]))}
        for name, (finished, total) in rows.items():
            if name not in self._tasks:
                self._tasks[name] = bars.add_task(name, total=total)
            bars.update(self._tasks[name], completed=finished, total=total)
        bars.figures = _summary_line(figures)

    def _quiet_control_keys(self) -> None:
        """While the live view owns the terminal, keys typed are not echoed into it (a ``^C``
        after a full-width bar line wraps it and leaves a copy behind on every press) and a
        signal does not throw away the frame being drawn; ``close`` restores the terminal."""
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd):
                return
            saved = termios.tcgetattr(fd)
            quiet = [*saved]
            quiet[3] = (quiet[3] & ~(termios.ECHO | termios.ECHOCTL)) | termios.NOFLSH
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
            self._tty = (fd, saved)
        except (OSError, ValueError, termios.error):
            self._tty = None  # not a terminal we may change: the view works as it is

    def close(self) -> None:
        """Draw the final figures (no ETA: the run is over), then leave the bars on the screen
        as they ended."""
        if self._tty is not None:
            fd, saved = self._tty
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(fd, termios.TCSANOW, saved)
            self._tty = None
        if self._bars is not None:
            if self._engine is not None:
                stats = self._engine.stats()
                figures = {**figures_of(stats), "eta": "–"}
                self._draw(self._bars, stats.counts.by_model, figures)
            self._bars.stop()


class _Bars(RichProgress):
    """The bars, then the run's figures on a line of their own that wraps at the width."""

    figures = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.figures:
            yield Text(self.figures, overflow="fold")


TOTAL = "total"


def _summary_line(f: dict[str, float | int | str]) -> str:
    line = (
        f"{float(f['rate']):.2f} jobs/s · ETA {f['eta']} · {f['spend']} · "
        f"{f['failed']} failed · {f['in_flight']} in flight · {f['rate_limited']} 429s"
    )
    return f"{line}\n{f['keys']}" if f["keys"] else line
