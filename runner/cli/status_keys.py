"""A pool's keys in ``krea-batch status``: the jobs each key holds and what they cost, and how
the last run left each one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from runner.money import spend_text
from runner.outputs import Layout, RecordStatus
from runner.state.ledger import KeyState

KEY_JOBS = ("completed", "failed", "ambiguous", "in_flight", "unknown_submits")


def keys_of(states: Iterable[KeyState], last_run: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A pool's keys, by fingerprint: their jobs (from the journal, which records the key of
    each submit), what those cost, and how the last run left each key (from its summary:
    where the key is, retired or cooling). Empty for a folder run with one key."""
    keys: dict[str, dict[str, Any]] = {}
    for state in states:
        if state.account is None:
            continue
        figures = keys.setdefault(state.account, _key_figures())
        if state.doubt is not None:
            figures["ambiguous"] += 1
        elif state.done == RecordStatus.COMPLETED:
            figures["completed"] += 1
        elif state.done == RecordStatus.FAILED:
            figures["failed"] += 1
        elif state.job_id is not None:
            figures["in_flight"] += 1
        elif state.pending_since is not None:
            figures["unknown_submits"] += 1
        figures["spend_usd"] += state.done_usd
        figures["spend_units"] += state.done_units
    if len(keys) < 2 and not last_run:
        return {}
    for name, last in last_run.items():
        figures = keys.setdefault(name, _key_figures())
        figures["place"] = last.get("place")
        if last.get("retired"):
            figures["state"] = f"retired: {last['retired']}"
        elif last.get("cooling"):
            figures["state"] = f"cooled down: {last['cooling']}"
    for figures in keys.values():
        figures["spend_usd"] = round(figures["spend_usd"], 4)
        figures["spend_units"] = round(figures["spend_units"], 3)
    return keys


def _key_figures() -> dict[str, Any]:
    return {
        "place": None,
        "state": "ok",
        **dict.fromkeys(KEY_JOBS, 0),
        "spend_usd": 0.0,
        "spend_units": 0.0,
    }


def last_run_keys(layout: Layout) -> dict[str, Any]:
    """The keys as the last run's summary.json left them (none: no summary, or one key)."""
    try:
        data = json.loads(layout.summary.read_text(encoding="utf-8"))
        keys = data["counts"]["by_account"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(keys, dict):
        return {}
    return {k: v for k, v in keys.items() if isinstance(k, str) and isinstance(v, dict)}


def key_line(name: str, figures: Mapping[str, Any]) -> str:
    """``key 2 of keys.txt (35a34ba4): 12 completed, 1 in flight, $0.40; retired: …``."""
    place = figures.get("place")
    label = f"{place} ({name})" if place else f"key {name}"
    jobs = [f"{figures[k]} {k.replace('_', ' ')}" for k in KEY_JOBS if figures.get(k)]
    spend = spend_text(figures["spend_usd"], figures["spend_units"])
    return f"  {label}: {', '.join(jobs) or 'no jobs'}, {spend}; {figures['state']}"
