"""``summary.json``: one shape for a run and for a merge of shard folders.

Every key is always there; what does not apply is null (a merge has no manifest, API,
requests or settings; a run is merged from nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner import jsontext
from runner.files import read_regular
from runner.outputs.layout import path_text
from runner.state.figures import REQUEST_KINDS, RunStats
from runner.timefmt import iso_time


def summary(
    *,
    out: str,
    stats: RunStats,
    records: int,
    exit_code: int,
    stopped: str | None = None,
    manifest: str | None = None,
    api_base: str | None = None,
    settings: Mapping[str, Any] | None = None,
    merged_from: Sequence[str] | None = None,
) -> dict[str, Any]:
    """summary.json of a run that started at ``stats.started`` and ended at ``stats.now`` (a
    merge has no requests)."""
    data = stats.counts.to_json()
    requests = None if merged_from is not None else stats.requests
    return {
        "manifest": None if manifest is None else path_text(manifest),
        "merged_from": [path_text(s) for s in merged_from] if merged_from is not None else None,
        "out": path_text(out),
        "api_base": api_base,
        "started_at": iso_time(stats.started),
        "ended_at": iso_time(stats.now),
        "wall_seconds": round(stats.now - stats.started, 3),
        "exit_code": exit_code,
        "stopped": None if stopped is None else path_text(stopped),
        "results_records": records,
        "api_requests": None
        if requests is None
        else sum(n for kind, n in requests.items() if kind != "download"),
        "requests": None
        if requests is None
        else {kind: requests.get(kind, 0) for kind in REQUEST_KINDS},
        "requests_per_job": None if requests is None else stats.per_job,
        "counts": data,
        "estimated_spend_units": data["spend_units"],
        "estimated_spend_usd": data["spend_usd"],
        "settings": None if settings is None else dict(settings),
        "listing": None,  # the job listing's passes and pages (a run in list mode)
        "webhooks": None,  # deliveries used, ignored and refused (a run with webhooks)
        "folder": None,  # the folder's jobs over every run: completed, failed, ambiguous, spend
    }


def read_summary(path: Path) -> dict[str, Any]:
    """A folder's summary.json; empty where there is none or it is not a JSON object (a run
    killed before writing it, or a file edited by hand)."""
    try:
        data = jsontext.loads(read_regular(path, 64 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
