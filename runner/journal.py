"""The journal: an append-only, fsynced log of what was sent and what finished, per job key.

It is the output folder's memory across crashes. Each line is one JSON event:

    submitting  {k, a, t}            a POST is about to go out (written *before* it is sent)
    submitted   {k, a, id, ts, tr, c} its answer: the remote job id (and timing, for clock skew)
    lost        {k, a}               the POST certainly created nothing (refused, or checked)
    retry       {k, a, id, error}    the remote job failed; the next attempt may submit again
    done        {k, record}          the final outcome; written after its files are in place
    unresolved  {k, a, candidates}   an answer was lost and we cannot tell which job is ours

Appends from many tasks are grouped: one write and one fsync covers every line waiting, and
each appender returns only once its line is on disk. A torn last line (a crash mid-write) is
dropped on replay.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KeyState:
    """What the journal says about one job key."""

    attempts: int = 0  # POSTs sent for this key, over all runs
    accepted: int = 0  # remote jobs created for it in the current round of attempts
    job_id: str | None = None  # the remote job currently ours, not yet finished
    submitted_at: float | None = None  # when that job was submitted
    pending_since: float | None = None  # a POST went out at this time and its answer is unknown
    done: dict[str, Any] | None = None  # the final record, once finished
    unresolved: bool = False


@dataclass(slots=True)
class Replay:
    """The journal's content, folded into per-key states."""

    states: dict[str, KeyState] = field(default_factory=dict)
    known_ids: set[str] = field(default_factory=set)
    skew: tuple[float, float] | None = None  # bounds of server clock minus ours, in seconds
    lines: int = 0
    torn: int = 0


def fold(events: Iterator[dict[str, Any]]) -> Replay:
    """Fold journal events into states (pure; see the module docstring for the events)."""
    replay = Replay()
    low, high = -float("inf"), float("inf")
    for event in events:
        replay.lines += 1
        key = event.get("k")
        if not isinstance(key, str):
            continue
        state = replay.states.setdefault(key, KeyState())
        kind = event.get("e")
        if kind == "submitting":
            state.attempts = max(state.attempts, int(event.get("a", 0)))
            state.pending_since = float(event.get("t", 0.0))
            state.unresolved = False
        elif kind == "submitted":
            state.job_id = str(event["id"])
            state.pending_since = None
            state.accepted += 1
            state.submitted_at = event.get("ts")
            replay.known_ids.add(state.job_id)
            if (
                event.get("c") is not None
                and event.get("ts") is not None
                and not event.get("adopted")
            ):
                low = max(low, event["c"] - event.get("tr", event["ts"]))
                high = min(high, event["c"] - event["ts"])
        elif kind == "lost":
            state.pending_since = None
        elif kind == "retry":
            state.job_id = None
        elif kind == "done":
            state.done = event.get("record") or {}
            state.job_id = None
            state.pending_since = None
            state.accepted = 0
        elif kind == "unresolved":
            state.pending_since = None
            state.unresolved = True
            replay.known_ids.update(event.get("candidates", ()))
    if low <= high and low > -float("inf"):
        replay.skew = (low, high)
    return replay


def read_events(path: Path) -> tuple[list[dict[str, Any]], int, int]:
    """Events of a journal file, how many torn lines were skipped, and the good length."""
    if not path.exists():
        return [], 0, 0
    data = path.read_bytes()
    events, torn, good = [], 0, 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            torn += 1  # a write cut short by a crash: the event never happened
            break
        try:
            event = json.loads(raw)
        except ValueError:
            torn += 1
            good += len(raw)  # keep the line, to not lose what follows it
            continue
        if isinstance(event, dict):
            events.append(event)
        good += len(raw)
    return events, torn, good


class Journal:
    """Appends events durably; open it with ``Journal.open`` to replay what is there."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._handle = handle
        self._pending: list[str] = []
        self._collecting = 0  # number of the batch new lines join
        self._written = -1  # number of the last batch on disk
        self._flushing = False
        self._flushed = anyio.Event()

    @classmethod
    def open(cls, path: Path) -> tuple[Journal, Replay]:
        events, torn, good = read_events(path)
        if path.exists() and good < path.stat().st_size:
            with path.open("r+b") as handle:
                handle.truncate(good)  # drop the torn tail so the next line starts clean
        replay = fold(iter(events))
        replay.torn = torn
        if torn:
            log.warning("journal %s: skipped %d torn line(s)", path, torn)
        return cls(path, path.open("a", encoding="utf-8")), replay

    async def append(self, kind: str, key: str, **fields: Any) -> None:
        """Write one event; returns once it is fsynced."""
        line = json.dumps(
            {"e": kind, "k": key, **fields}, ensure_ascii=False, separators=(",", ":")
        )
        batch = self._collecting
        self._pending.append(line + "\n")
        while self._written < batch:
            if self._flushing:
                await self._flushed.wait()
            else:
                await self._flush()

    async def _flush(self) -> None:
        lines, self._pending = self._pending, []
        batch, self._collecting = self._collecting, self._collecting + 1
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):  # a half-done flush would lose other tasks' lines
                await anyio.to_thread.run_sync(self._write, "".join(lines))
            self._written = batch
        finally:
            self._flushing = False
            self._flushed.set()
            self._flushed = anyio.Event()

    def _write(self, text: str) -> None:
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()
