"""The journal: an append-only, fsynced log of what was sent and what finished, per job key.

It is the output folder's memory across crashes. Each line is one JSON event:

    submitting  {k, a, t, lo, hi}      a POST is about to go out (written *before* it is sent),
                                       with the server's clock as known then (skew bounds)
    submitted   {k, a, id, ts, tr, c}  its answer: the remote job id (and timing, for clock skew)
    lost        {k, a}                 the POST certainly created nothing (refused, or checked)
    retry       {k, a, id, error}      the remote job failed; the next attempt may submit again
    ambiguous   {k, a, candidates, why} an answer was lost and nothing proves which job is ours
    released    {k, a}                 the user chose to send an ambiguous job again
    done        {k, record}            the final outcome; written after its files are in place
    asset       {k, url}               a local reference image uploaded: k is its sha256

``apply`` is the one place where an event changes a job's state: replay folds the file with
it, and a live run records every event through ``Journal.record``, which appends the line and
then applies it. Appends from many tasks are grouped: one write and one fsync covers every line
waiting, and each appender returns only once its line is on disk. A torn last line (a crash
mid-write) is dropped on replay, and so is a line whose fields have the wrong shape.

The journal keeps the one promise that costs money: for any key, the POSTs sent less those
proven to have created nothing is at most one. ``Journal.record`` refuses a ``submitting``
line while an earlier POST of the key is unsettled (pending, ambiguous or running).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from runner import jsontext
from runner.api.skew import ClockSkew
from runner.errors import DiskError, WouldPayTwice
from runner.files import bounded_lines, open_regular
from runner.outputs.records import (
    RecordStatus,
    ResultRecord,
    parse_record,
    spend_of,
    status_of,
)

log = logging.getLogger(__name__)

MAX_LINE = 16 << 20  # a journal line longer than this is no event of ours
# Why a lost submit is ambiguous when the listing was read whole but matched no single job.
NO_SINGLE_MATCH = "its lost submit matches no single job"


@dataclass(slots=True)
class KeyState:
    """What the journal says about one job key (small: a folder may hold 100,000 of them)."""

    attempts: int = 0  # POSTs sent for this key, over all runs
    accepted: int = 0  # remote jobs created for it in the current round of attempts
    job_id: str | None = None  # the remote job currently ours, not yet finished
    submitted_at: float | None = None  # when that job was submitted
    answered_at: float | None = None  # when its POST was answered: the job existed by then
    pending_since: float | None = None  # a POST went out at this time and its answer is unknown
    pending_skew: ClockSkew | None = None  # the server's clock as known when it went out
    candidates: tuple[str, ...] = ()  # ambiguous: the remote jobs that could be ours
    doubt: str | None = None  # ambiguous: why no job could be proven ours (or none)
    done: RecordStatus | None = None  # once finished
    done_at: int | None = None  # where the `done` line (the full record) starts in the journal
    done_units: float = 0.0  # its estimated cost in compute units, when it has no USD price
    done_usd: float = 0.0  # its estimated cost in US dollars
    done_error: str | None = None

    @property
    def remote(self) -> bool:
        """An earlier POST may have created a job that is not finished: poll, never resend."""
        return self.done is None and not self.settled

    @property
    def settled(self) -> bool:
        """No POST of this key may still hold a job we do not know: a new POST pays once."""
        return self.job_id is None and self.pending_since is None and self.doubt is None

    def reopen(self) -> None:
        """Forget a failed outcome so the job runs again (``--retry-failed``)."""
        self.done, self.done_at, self.done_error, self.accepted = None, None, None, 0


@dataclass(slots=True)
class Ledger:
    """Every key's state, the remote job ids the folder knows, and the measured clock skew."""

    states: dict[str, KeyState] = field(default_factory=dict)
    known_ids: set[str] = field(default_factory=set)
    skew: ClockSkew = field(default_factory=ClockSkew)
    assets: dict[str, str] = field(default_factory=dict)  # uploaded files: sha256 → URL

    def state(self, key: str) -> KeyState:
        return self.states.setdefault(key, KeyState())


def apply(ledger: Ledger, event: Mapping[str, Any], offset: int | None = None) -> None:
    """Change ``ledger`` as one journal event says (see the module docstring for the events)."""
    key = event.get("k")
    if event.get("e") == "asset" and isinstance(event.get("url"), str):
        ledger.assets[str(key)] = event["url"]  # its key is the file's sha256
        return
    if not isinstance(key, str):
        return
    state = ledger.state(key)
    kind = event.get("e")
    if kind == "submitting":
        state.attempts = max(state.attempts, int(event.get("a", 0)))
        state.pending_since = float(event["t"])
        low, high = event.get("lo"), event.get("hi")
        state.pending_skew = None
        if low is not None and high is not None:
            state.pending_skew = ClockSkew(float(low), float(high), measured=True)
        state.candidates, state.doubt = (), None
    elif kind == "submitted":
        adopted = bool(event.get("adopted"))
        state.job_id = str(event["id"])
        state.pending_since = state.pending_skew = state.doubt = None
        state.accepted += 1
        state.submitted_at = event.get("ts")
        state.answered_at = event.get("tr")
        ledger.known_ids.add(state.job_id)
        sent, received, created = event.get("ts"), event.get("tr"), event.get("c")
        # An adopted job's times say nothing of the clocks: only answered POSTs measure them.
        if sent is not None and received is not None and created is not None and not adopted:
            ledger.skew = ledger.skew.observe(float(sent), float(received), float(created))
    elif kind == "lost":
        state.pending_since = state.pending_skew = None
    elif kind == "retry":
        state.job_id = None
    elif kind in ("ambiguous", "unresolved"):  # "unresolved": its name in journals before 0.2
        state.pending_since = state.pending_skew = None
        state.candidates = tuple(str(c) for c in event.get("candidates", ()))
        state.doubt = event.get("why") or NO_SINGLE_MATCH
        ledger.known_ids.update(state.candidates)
    elif kind == "released":
        state.reopen()
        state.candidates, state.doubt = (), None
    elif kind == "done":
        record = event.get("record")
        record = record if isinstance(record, dict) else {}
        state.done = status_of(record)
        state.done_at = offset
        state.done_usd, state.done_units = spend_of(record)
        error = record.get("error")
        state.done_error = None if error is None else str(error)
        state.job_id = state.pending_since = state.pending_skew = None
        if state.done != RecordStatus.AMBIGUOUS:
            state.candidates, state.doubt = (), None  # an ambiguous job keeps them for `status`
        elif state.doubt is None:  # a folder rebuilt from results.jsonl
            state.doubt = str(record.get("error") or "ambiguous")
        state.accepted = 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "k": lambda v: isinstance(v, str),
    "a": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "t": _number,
    "lo": _number,
    "hi": _number,
    "id": lambda v: isinstance(v, str) and bool(v),
    "ts": lambda v: v is None or _number(v),
    "tr": lambda v: v is None or _number(v),
    "c": lambda v: v is None or _number(v),
    "candidates": _text_list,
    "why": lambda v: v is None or isinstance(v, str),
    "record": lambda v: isinstance(v, dict),
    "url": lambda v: isinstance(v, str),
}
_REQUIRED = {
    "submitting": ("k", "t"),
    "submitted": ("k", "id"),
    "lost": ("k",),
    "retry": ("k",),
    "ambiguous": ("k", "candidates"),
    "unresolved": ("k", "candidates"),
    "released": ("k",),
    "done": ("k", "record"),
    "asset": ("k", "url"),
}


def well_formed(event: Mapping[str, Any]) -> bool:
    """Whether ``event`` is a journal event this version can apply: a known kind, its fields
    there, and every field it carries of the right type."""
    required = _REQUIRED.get(event.get("e"))  # type: ignore[arg-type]
    if required is None or any(name not in event for name in required):
        return False
    return all(check(event[name]) for name, check in _CHECKS.items() if name in event)


@dataclass(slots=True)
class ReplayStats:
    """What reading a journal file found beyond its events."""

    lines: int = 0
    torn: int = 0
    misshapen: int = 0  # whole JSON lines that are not events of this version
    good_bytes: int = 0  # the length of the journal up to its last whole line


def fold(events: Iterable[tuple[int, Mapping[str, Any]]]) -> Ledger:
    """Fold ``(offset, event)`` pairs into a ledger."""
    ledger = Ledger()
    for offset, event in events:
        apply(ledger, event, offset)
    return ledger


def read_events(
    path: Path, stats: ReplayStats | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(offset, event)`` from a journal file, stopping at a torn last line."""
    stats = stats or ReplayStats()
    if not path.exists() and not path.is_symlink():
        return
    offset = 0
    with open_regular(path, follow=False) as handle:
        for raw, length in bounded_lines(handle, MAX_LINE):
            if raw is None:  # far longer than any event: not one of ours
                stats.misshapen += 1
                offset += length
                stats.good_bytes = offset
                continue
            if not raw.endswith(b"\n"):
                stats.torn += 1  # a write cut short by a crash: the event never happened
                break
            try:
                event = jsontext.loads(raw)
            except ValueError:
                stats.torn += 1  # kept, to not lose what follows it
                event = None
            if isinstance(event, dict) and well_formed(event):
                stats.lines += 1
                yield offset, event
            elif event is not None:
                stats.misshapen += 1
            offset += len(raw)
            stats.good_bytes = offset


def records_at(path: Path, offsets: Iterable[int]) -> Iterator[ResultRecord]:
    """The results records of the `done` lines at these offsets, read one at a time."""
    with open_regular(path, follow=False) as handle:
        for offset in offsets:
            handle.seek(offset)
            record = parse_record(jsontext.loads(handle.readline()).get("record"))
            if record is not None:
                yield record


def _line(event: Mapping[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


Offload = Callable[[Callable[[bytes], None], bytes], Awaitable[None]]


class Journal:
    """Appends events durably and keeps the ledger they fold into; open with ``Journal.open``.

    ``offload`` runs the blocking write-and-fsync away from the event loop: a worker thread
    by default; tests on a virtual clock run it inline, so no thread races their time.
    """

    def __init__(
        self,
        path: Path,
        handle: BinaryIO,
        ledger: Ledger,
        offload: Offload = anyio.to_thread.run_sync,
    ) -> None:
        self.path = path
        self.ledger = ledger
        self._offload = offload
        self._handle = handle
        self._end = handle.seek(0, os.SEEK_END)  # where the next queued line will start
        self._pending: list[bytes] = []
        self._collecting = 0  # number of the batch new lines join
        self._written = -1  # number of the last batch on disk
        self._flushing = False
        self._flushed = anyio.Event()

    @classmethod
    def open(cls, path: Path, offload: Offload = anyio.to_thread.run_sync) -> Journal:
        stats = ReplayStats()
        ledger = fold(read_events(path, stats))
        if path.exists() and stats.good_bytes < path.stat().st_size:
            # Drop the torn tail, so the next line starts clean (read_events checked that the
            # journal is a regular file, not a link).
            os.truncate(path, stats.good_bytes)
        if stats.torn:
            log.warning("journal %s: skipped %d torn line(s)", path, stats.torn)
        if stats.misshapen:
            log.warning("journal %s: skipped %d line(s) of the wrong shape", path, stats.misshapen)
        return cls(path, open_regular(path, follow=False, write=True), ledger, offload)

    async def record(self, kind: str, key: str, **fields: Any) -> int:
        """Append one event, wait until it is fsynced, apply it; returns its line's offset."""
        event = {"e": kind, "k": key, **fields}
        if kind == "submitting" and not self.ledger.state(key).settled:
            raise WouldPayTwice(key)
        [offset] = await self._append([_line(event)])
        apply(self.ledger, event, offset)
        return offset

    async def record_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append several events in one write and one fsync, then apply them in order."""
        events = list(events)
        offsets = await self._append([_line(event) for event in events])
        for event, offset in zip(events, offsets, strict=True):
            apply(self.ledger, event, offset)

    async def flush(self) -> None:
        """Wait until every line recorded or noted so far is on disk."""
        await self._append([])

    async def _append(self, lines: list[bytes]) -> list[int]:
        offsets = []
        for line in lines:
            offsets.append(self._end)
            self._end += len(line)  # lines are written in queue order
        batch = self._collecting
        self._pending.extend(lines)
        while self._written < batch:
            if self._flushing:
                await self._flushed.wait()
            else:
                await self._flush()
        return offsets

    async def _flush(self) -> None:
        lines, self._pending = self._pending, []
        batch, self._collecting = self._collecting, self._collecting + 1
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):  # a half-done flush would lose other tasks' lines
                await self._offload(self._write, b"".join(lines))
            self._written = batch
        except OSError as exc:  # a torn line at the end is dropped by the next replay
            raise DiskError(str(self.path.parent.parent), exc) from exc
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
