"""A run seen from outside while it runs: OUT/status.json and a Prometheus textfile.

Both are rewritten every few seconds (write, then rename: a reader sees the old file or the
new one), so a cron run overnight can be watched by `krea-batch status OUT`, a dashboard, or
node_exporter's textfile collector. The heartbeat says when the file was last written; a
status older than a few intervals belongs to a run that is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from runner import jsontext
from runner.files import read_regular
from runner.outputs.atomic import write_atomic
from runner.outputs.layout import Layout
from runner.state.figures import REQUEST_KINDS, RunStats
from runner.timefmt import iso_time

STALE_AFTER = 10.0  # seconds without a heartbeat before a status is a past run's


class Run(Protocol):
    """What a live view reads of a running engine."""

    @property
    def stopping(self) -> str | None: ...

    def stats(self) -> RunStats: ...


def payload(
    stats: RunStats, state: str, stopping: str | None = None, api_base: str | None = None
) -> dict[str, Any]:
    """What status.json says about a run (pure)."""
    counts, eta = stats.counts, stats.eta_seconds
    return {
        "state": state,  # running | finished
        "pid": os.getpid(),
        "host": socket.gethostname(),  # where the pid means something
        "api_base": api_base,  # what `status --refresh` asks, even of a run killed midway
        "started_at": iso_time(stats.started),
        "heartbeat_at": iso_time(stats.now),
        "heartbeat": round(stats.now, 3),
        "total": counts.total,
        "done": stats.done,
        "failed": counts.failed,
        "ambiguous": counts.ambiguous_jobs,
        "stragglers": counts.stragglers,
        "cancelled": counts.cancelled,
        "in_flight": stats.in_flight,
        "posting": stats.posting,
        "unfinished": counts.unfinished,
        "jobs_per_second": round(stats.jobs_per_second, 4),
        "eta_seconds": None if eta is None else round(eta, 1),
        "spend_units": round(counts.spend_units, 3),
        "spend_usd": round(counts.spend_usd, 4),
        "errors": {
            "transient": counts.transient_errors,
            "overload_429": counts.overload_429,
            "rate_limited_429": counts.rate_limited_429,
            "lost_answers": counts.lost_answers,
        },
        "requests": {kind: stats.requests.get(kind, 0) for kind in REQUEST_KINDS},
        "requests_per_job": stats.per_job,
        "keys": {
            name: {**key.to_json(), "in_flight": stats.running.get(name, 0)}
            for name, key in counts.by_account.items()
        },
        "stopping": stopping,
    }


def prometheus(status: Mapping[str, Any]) -> str:
    """The status in Prometheus text format, for node_exporter's textfile collector."""
    gauges = [
        ("krea_batch_jobs_total", "Jobs in the manifest", status["total"]),
        ("krea_batch_jobs_done", "Jobs completed, in this run or before", status["done"]),
        ("krea_batch_jobs_failed", "Jobs that failed in this run", status["failed"]),
        ("krea_batch_jobs_ambiguous", "Jobs that ended ambiguous", status["ambiguous"]),
        ("krea_batch_jobs_in_flight", "Jobs at the server now", status["in_flight"]),
        ("krea_batch_jobs_per_second", "Jobs finished per second", status["jobs_per_second"]),
        ("krea_batch_spend_usd", "Estimated spend in US dollars", status["spend_usd"]),
        ("krea_batch_spend_units", "Estimated spend in compute units", status["spend_units"]),
        ("krea_batch_heartbeat_seconds", "When this file was written", status["heartbeat"]),
        ("krea_batch_running", "1 while the run goes on", int(status["state"] == "running")),
    ]
    lines = []
    for name, text, value in gauges:
        lines += [f"# HELP {name} {text}.", f"# TYPE {name} gauge", f"{name} {value}"]
    name = "krea_batch_errors_total"
    lines += [f"# HELP {name} Errors seen, by kind.", f"# TYPE {name} counter"]
    lines += [f'{name}{{kind="{kind}"}} {n}' for kind, n in status["errors"].items()]
    name = "krea_batch_requests_total"
    lines += [f"# HELP {name} Requests sent, by kind.", f"# TYPE {name} counter"]
    lines += [f'{name}{{kind="{kind}"}} {n}' for kind, n in status["requests"].items()]
    per_key = (
        ("krea_batch_key_jobs_in_flight", "Jobs at the server now, by key", "in_flight"),
        ("krea_batch_key_jobs_done", "Jobs completed in this run, by key", "completed"),
        ("krea_batch_key_spend_usd", "Estimated spend in US dollars, by key", "spend_usd"),
        ("krea_batch_key_retired", "1 once the key takes no more jobs", "retired"),
    )
    keys = status.get("keys") or {}
    for name, text, field in per_key if keys else ():
        lines += [f"# HELP {name} {text}.", f"# TYPE {name} gauge"]
        for key, figures in keys.items():
            value = int(figures[field] is not None) if field == "retired" else figures[field]
            lines.append(f'{name}{{key="{key}"}} {value}')
    return "\n".join(lines) + "\n"


class LiveStatus:
    """Called with the engine as often as the engine likes; writes every ``every`` seconds."""

    def __init__(
        self,
        root: Path,
        metrics: Path | None = None,
        every: float = 2.0,
        api_base: str | None = None,
    ) -> None:
        self.path = Layout(root).status
        self.api_base = api_base
        self.metrics = metrics
        self.every = every
        self._last = -float("inf")

    def __call__(self, engine: Run) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.write(engine, "running")

    def write(self, engine: Run, state: str) -> None:
        """Write both files now; a failure is not worth stopping a run for."""
        status = payload(engine.stats(), state, engine.stopping, self.api_base)
        try:
            write_atomic(self.path, json.dumps(status, indent=1) + "\n", durable=False)
            if self.metrics is not None:
                write_atomic(self.metrics, prometheus(status), durable=False)
        except OSError:
            pass  # a full disk is caught where it matters: the journal


def read_status_file(root: Path) -> dict[str, Any] | None:
    """status.json as the last run left it (running or finished), or None."""
    try:
        status = jsontext.loads(read_regular(Layout(root).status, 16 << 20))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def read_running(root: Path) -> dict[str, Any] | None:
    """status.json when it says ``running``, whether or not that run is still alive."""
    status = read_status_file(root)
    return status if status is not None and status.get("state") == "running" else None


def read_live(root: Path, now: float | None = None) -> dict[str, Any] | None:
    """The status of a run writing to ``root`` right now, or None: none, a past one, one
    whose heartbeat stopped, or one of this machine whose process is gone (``kill -9``:
    its last heartbeat is still fresh for a few seconds)."""
    status = read_running(root)
    if status is None:
        return None
    beat = status.get("heartbeat")
    now = time.time() if now is None else now
    if not isinstance(beat, int | float) or now - beat > STALE_AFTER:
        return None
    pid = status.get("pid")
    here = status.get("host") == socket.gethostname()
    if here and isinstance(pid, int) and pid > 0 and not _alive(pid):
        return None
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a pid this system cannot hold: not ours to say
    return True
