"""Progress of a run: a live table on a terminal, periodic log lines otherwise (cron)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from runner.engine import Engine

from runner.engine.counts import requests_per_job
from runner.money import spend_text

log = logging.getLogger("runner.progress")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def snapshot(engine: Engine) -> dict[str, float | int | str]:
    """The figures both displays show."""
    shot = engine.snapshot()
    rate = shot.finished_now / max(1e-6, shot.now - shot.started)
    remaining = shot.unfinished
    return {
        "done": shot.done,
        "failed": shot.failed + shot.ambiguous,
        "in_flight": shot.in_flight,
        "queued": max(0, remaining - shot.in_flight),
        "total": shot.total,
        "rate": rate,
        "eta": _eta(remaining / rate if rate > 0 and remaining else None),
        "spend": spend_text(shot.spend_usd, shot.spend_units),
        "requests": requests_text(requests_per_job(shot.requests, shot.finished_now)),
    }


def requests_text(per_job: dict[str, float]) -> str:
    """``1.08 req/job (submit 1.00, list 0.05, job 0.03)``: API requests, downloads apart."""
    parts = ", ".join(
        f"{kind} {per_job[kind]:.2f}" for kind in ("submit", "list", "job") if per_job[kind]
    )
    return f"{per_job['api']:.2f} req/job" + (f" ({parts})" if parts else "")


class Progress:
    """Call it with the engine as often as you like; it shows what is due."""

    def __init__(self, live: bool, interval: float = 30.0) -> None:
        self.interval = interval
        self._last = 0.0
        self._live = Live(console=Console(stderr=True), refresh_per_second=4) if live else None
        if self._live is not None:
            self._live.start()

    def __call__(self, engine: Engine) -> None:
        figures = snapshot(engine)
        if self._live is not None:
            self._live.update(self._table(figures))
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info(
                "progress: %(done)d done, %(failed)d failed, %(in_flight)d in flight, "
                "%(queued)d queued of %(total)d; %(rate).2f jobs/s, ETA %(eta)s, "
                "spend %(spend)s; %(requests)s",
                figures,
            )

    @staticmethod
    def _table(f: dict[str, float | int | str]) -> Table:
        table = Table(show_header=True, header_style="bold", box=None)
        columns = (
            "done",
            "failed",
            "in flight",
            "queued",
            "jobs/s",
            "ETA",
            "spend",
            "requests",
        )
        for column in columns:
            table.add_column(column, justify="right")
        table.add_row(
            f"{f['done']}/{f['total']}",
            str(f["failed"]),
            str(f["in_flight"]),
            str(f["queued"]),
            f"{float(f['rate']):.2f}",
            str(f["eta"]),
            str(f["spend"]),
            str(f["requests"]),
        )
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
