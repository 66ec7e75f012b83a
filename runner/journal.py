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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KeyState:
    """What the journal says about one job key (small: a folder may hold 100,000 of them)."""

    attempts: int = 0  # POSTs sent for this key, over all runs
    accepted: int = 0  # remote jobs created for it in the current round of attempts
    job_id: str | None = None  # the remote job currently ours, not yet finished
    submitted_at: float | None = None  # when that job was submitted
    pending_since: float | None = None  # a POST went out at this time and its answer is unknown
    done: str | None = None  # "completed" or "failed", once finished
    done_at: int | None = None  # where the `done` line (the full record) starts in the journal
    done_units: float = 0.0  # its estimated cost
    done_error: str | None = None
    unresolved: bool = False


@dataclass(slots=True)
class Replay:
    """The journal's content, folded into per-key states."""

    states: dict[str, KeyState] = field(default_factory=dict)
    known_ids: set[str] = field(default_factory=set)
    skew: tuple[float, float] | None = None  # bounds of server clock minus ours, in seconds
    lines: int = 0
    torn: int = 0
    good_bytes: int = 0  # the length of the journal up to its last whole line


def fold(events: Iterable[tuple[int, dict[str, Any]]]) -> Replay:
    """Fold ``(offset, event)`` pairs into states (see the module docstring for the events)."""
    replay = Replay()
    low, high = -float("inf"), float("inf")
    for offset, event in events:
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
            mark_done(state, event.get("record") or {}, offset)
        elif kind == "unresolved":
            state.pending_since = None
            state.unresolved = True
            replay.known_ids.update(event.get("candidates", ()))
    if low <= high and low > -float("inf"):
        replay.skew = (low, high)
    return replay


def mark_done(state: KeyState, record: Mapping[str, Any], offset: int | None) -> None:
    """Record in ``state`` that the job finished, keeping only the summary of its record."""
    state.done = str(record.get("status", "failed"))
    state.done_at = offset
    state.done_units = float(record.get("cost_units") or 0.0)
    state.done_error = record.get("error")
    state.job_id = None
    state.pending_since = None
    state.accepted = 0


def read_events(
    path: Path, replay_stats: Replay | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(offset, event)`` from a journal file, stopping at a torn last line.

    ``replay_stats``, if given, receives the count of torn lines and the length of the good part.
    """
    stats = replay_stats or Replay()
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                stats.torn += 1  # a write cut short by a crash: the event never happened
                break
            try:
                event = json.loads(raw)
            except ValueError:
                stats.torn += 1  # kept, to not lose what follows it
                event = None
            if isinstance(event, dict):
                yield offset, event
            offset += len(raw)
            stats.good_bytes = offset


def records_at(path: Path, offsets: Iterable[int]) -> Iterator[dict[str, Any]]:
    """The results records of the `done` lines at these offsets, read one at a time."""
    with path.open("rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            record = json.loads(handle.readline()).get("record")
            if isinstance(record, dict):
                yield record


class Journal:
    """Appends events durably; open it with ``Journal.open`` to replay what is there."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self._handle = handle
        self._end = handle.seek(0, os.SEEK_END)  # where the next queued line will start
        self._pending: list[bytes] = []
        self._collecting = 0  # number of the batch new lines join
        self._written = -1  # number of the last batch on disk
        self._flushing = False
        self._flushed = anyio.Event()

    @classmethod
    def open(cls, path: Path) -> tuple[Journal, Replay]:
        stats = Replay()
        replay = fold(read_events(path, stats))
        replay.torn, replay.good_bytes = stats.torn, stats.good_bytes
        if path.exists() and replay.good_bytes < path.stat().st_size:
            with path.open("r+b") as handle:
                handle.truncate(replay.good_bytes)  # drop the torn tail: the next line starts clean
        if replay.torn:
            log.warning("journal %s: skipped %d torn line(s)", path, replay.torn)
        return cls(path, path.open("ab")), replay

    async def append(self, kind: str, key: str, **fields: Any) -> int:
        """Write one event; returns, once it is fsynced, the offset its line starts at."""
        text = json.dumps(
            {"e": kind, "k": key, **fields}, ensure_ascii=False, separators=(",", ":")
        )
        line = (text + "\n").encode()
        offset, self._end = self._end, self._end + len(line)  # lines are written in queue order
        batch = self._collecting
        self._pending.append(line)
        while self._written < batch:
            if self._flushing:
                await self._flushed.wait()
            else:
                await self._flush()
        return offset

    async def _flush(self) -> None:
        lines, self._pending = self._pending, []
        batch, self._collecting = self._collecting, self._collecting + 1
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):  # a half-done flush would lose other tasks' lines
                await anyio.to_thread.run_sync(self._write, b"".join(lines))
            self._written = batch
        finally:
            self._flushing = False
            self._flushed.set()
            self._flushed = anyio.Event()

    def _write(self, data: bytes) -> None:
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()
