"""Progress of a run: live bars on a terminal, periodic log lines otherwise (cron)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import termios
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from runner.cli.live_view import Bars
    from runner.engine import Engine

from runner.money import spend_text
from runner.state.figures import RunStats
from runner.state.ledger import folder_counts
from runner.wording import duration

log = logging.getLogger("runner.cli.progress")


def figures_of(
    stats: RunStats, earlier: tuple[float, float] = (0.0, 0.0)
) -> dict[str, float | int | str]:
    """The figures both displays show; ``earlier``: the spend (USD, compute units) of the
    jobs earlier runs finished, which count as done too (a resumed run's spend is not $0)."""
    counts = stats.counts
    spend = spend_text(counts.spend_usd, counts.spend_units)
    if any(earlier):
        whole = spend_text(counts.spend_usd + earlier[0], counts.spend_units + earlier[1])
        spend = f"{whole} ({spend} this run)"
    return {
        "done": stats.done,
        "failed": counts.failed + counts.ambiguous_jobs,
        "in_flight": stats.in_flight,
        "queued": max(0, counts.unfinished - stats.in_flight),
        "total": counts.total,
        "rate": stats.jobs_per_second,
        "eta": duration(stats.eta_seconds),
        "spend": spend,
        "requests": requests_text(stats.per_job),
        "rate_limited": stats.rate_limited,
        "keys": keys_text(stats),
        "stragglers": counts.stragglers,
        "cancelled": counts.cancelled,
    }


def figure_fields(stats: RunStats) -> dict[str, Any]:
    """The progress line's figures as numbers: fields of a JSON log line."""
    counts, eta = stats.counts, stats.eta_seconds
    return {
        "done": stats.done,
        "failed": counts.failed,
        "ambiguous": counts.ambiguous_jobs,
        "in_flight": stats.in_flight,
        "queued": max(0, counts.unfinished - stats.in_flight),
        "total": counts.total,
        "jobs_per_second": round(stats.jobs_per_second, 4),
        "eta_seconds": None if eta is None else round(eta, 1),
        "spend_usd": round(counts.spend_usd, 4),
        "spend_units": round(counts.spend_units, 3),
        "requests_per_job": stats.per_job["api"],
        "rate_limited_429": stats.rate_limited,
        "stragglers": counts.stragglers,
        "cancelled": counts.cancelled,
    }


def keys_text(stats: RunStats) -> str:
    """A pool's keys, each by fingerprint: jobs in flight, done and spend, or why retired
    (empty for a run with one key)."""
    parts = key_phrases(stats)
    return ("keys: " + " · ".join(parts)) if parts else ""


def key_phrases(stats: RunStats) -> list[str]:
    """One phrase per key of a pool (none for a run with one key)."""
    parts = []
    for name, key in stats.counts.by_account.items():
        if key.retired is not None:
            parts.append(f"{name} retired ({key.retired.split(': ', 1)[-1][:40]})")
        else:
            running = stats.running.get(name, 0)
            spend = spend_text(key.spend_usd, key.spend_units)
            parts.append(f"{name} {running} running {key.completed} done {spend}")
    return parts


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

    def __init__(self, live: bool, interval: float = 30.0) -> None:
        self.interval = interval
        self._last = 0.0
        self.console: Console | None = None  # the terminal's, when live
        self._bars: Bars | None = None
        self._engine: Engine | None = None
        self._tty: tuple[int, list[Any]] | None = None
        self._earlier: tuple[float, float] | None = None  # spend of jobs done before this run
        if live:
            from runner.cli.live_view import Bars, stderr_console

            self._quiet_control_keys()
            self.console = stderr_console()
            self._bars = Bars(self.console)
            self._bars.start()

    def __call__(self, engine: Engine) -> None:
        self._engine = engine
        stats = engine.stats()
        if self._earlier is None:  # once: the folder's spend less this run's, so far
            held = folder_counts(engine.ledger)
            self._earlier = (
                max(0.0, held.spend_usd - stats.counts.spend_usd),
                max(0.0, held.spend_units - stats.counts.spend_units),
            )
        figures = figures_of(stats, self._earlier)
        if self._bars is not None:
            self._draw(self._bars, stats, figures)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info(
                "progress: %(done)d done, %(failed)d failed, %(in_flight)d in flight, "
                "%(queued)d queued of %(total)d; %(rate).2f jobs/s, ETA %(eta)s, "
                "spend %(spend)s; %(requests)s%(stragglers_line)s%(keys_line)s",
                {
                    **figures,
                    "keys_line": f"; {figures['keys']}" if figures["keys"] else "",
                    "stragglers_line": (
                        f"; {figures['stragglers']} stragglers resent"
                        if figures["stragglers"]
                        else ""
                    ),
                },
                extra=figure_fields(stats),
            )

    def _draw(self, bars: Bars, stats: RunStats, figures: dict[str, float | int | str]) -> None:
        ended = int(figures["done"]) + int(figures["failed"])
        rows = {
            **{m: (f.finished, f.jobs) for m, f in stats.counts.by_model.items()},
            TOTAL: (ended, int(figures["total"])),
        }
        keys = key_phrases(stats)
        bars.show(rows, [_phrases(figures)] + ([[f"keys: {keys[0]}", *keys[1:]]] if keys else []))

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
                figures = {**figures_of(stats, self._earlier or (0.0, 0.0)), "eta": "–"}
                self._draw(self._bars, stats, figures)
            self._bars.stop()


TOTAL = "total"


def _phrases(f: dict[str, float | int | str]) -> list[str]:
    """The live view's figures, phrase by phrase (a line breaks between them only)."""
    phrases = [
        f"{float(f['rate']):.2f} jobs/s",
        f"ETA {f['eta']}",
        str(f["spend"]),
        f"{f['failed']} failed",
        f"{f['in_flight']} in flight",
        f"{f['rate_limited']} 429s",
    ]
    if f["stragglers"]:
        phrases.append(f"{f['stragglers']} stragglers resent")
    if f["cancelled"]:
        phrases.append(f"{f['cancelled']} cancelled unbilled")
    return phrases
