"""The journal: an append-only, fsynced log of what was sent and what finished, per job key.

It is the output folder's memory across crashes. Each line is one event of
``runner.outputs.events`` (Submitting, Submitted, Lost, Retry, Ambiguous, Released, Done,
Asset), serialised there and nowhere else.

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

import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from runner import jsontext
from runner.api.skew import ClockSkew
from runner.errors import DiskError, WouldPayTwice
from runner.files import open_regular
from runner.outputs.events import (
    Ambiguous,
    Asset,
    Done,
    Event,
    Lost,
    Released,
    Retry,
    Submitted,
    Submitting,
    decode,
    encode,
)
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


def apply(ledger: Ledger, event: Event, offset: int | None = None) -> None:
    """Change ``ledger`` as one journal event says."""
    if isinstance(event, Asset):
        ledger.assets[event.sha256] = event.url
        return
    state = ledger.state(event.key)
    match event:
        case Done(_, record):
            state.done = status_of(record)
            state.done_at = offset
            state.done_usd, state.done_units = spend_of(record)
            error = record.get("error")
            state.done_error = None if error is None else str(error)
            state.job_id = state.pending_since = state.pending_skew = None
            if state.done != RecordStatus.AMBIGUOUS:
                state.candidates, state.doubt = (), None  # an ambiguous job keeps them
            elif state.doubt is None:  # a folder rebuilt from results.jsonl
                state.doubt = str(record.get("error") or "ambiguous")
            state.accepted = 0
        case Submitting(_, attempt, at, low, high):
            state.attempts = max(state.attempts, attempt)
            state.pending_since = at
            state.pending_skew = None
            if low is not None and high is not None:
                state.pending_skew = ClockSkew(low, high, measured=True)
            state.candidates, state.doubt = (), None
        case Submitted(_, _, job_id, sent, answered, created, adopted):
            state.job_id = job_id
            state.pending_since = state.pending_skew = state.doubt = None
            state.accepted += 1
            state.submitted_at, state.answered_at = sent, answered
            ledger.known_ids.add(job_id)
            # An adopted job's times say nothing of the clocks: only answered POSTs measure them.
            if sent is not None and answered is not None and created is not None and not adopted:
                ledger.skew = ledger.skew.observe(sent, answered, created)
        case Lost():
            state.pending_since = state.pending_skew = None
        case Retry():
            state.job_id = None
        case Ambiguous(_, _, candidates, why):
            state.pending_since = state.pending_skew = None
            state.candidates = candidates
            state.doubt = why or NO_SINGLE_MATCH
            ledger.known_ids.update(candidates)
        case Released():
            state.reopen()
            state.candidates, state.doubt = (), None


@dataclass(slots=True)
class ReplayStats:
    """What reading a journal file found beyond its events."""

    lines: int = 0
    torn: int = 0
    misshapen: int = 0  # whole JSON lines that are not events of this version
    good_bytes: int = 0  # the length of the journal up to its last whole line


def fold(events: Iterable[tuple[int, Event | dict[str, Any]]]) -> Ledger:
    """Fold ``(offset, event)`` pairs into a ledger (a journal line's JSON object is decoded;
    one of the wrong shape changes nothing)."""
    ledger = Ledger()
    for offset, event in events:
        typed = decode(event) if isinstance(event, dict) else event
        if typed is not None:
            apply(ledger, typed, offset)
    return ledger


def read_events(path: Path, stats: ReplayStats | None = None) -> Iterator[tuple[int, Event]]:
    """Stream ``(offset, event)`` from a journal file, stopping at a torn last line."""
    stats = stats or ReplayStats()
    if not path.exists() and not path.is_symlink():
        return
    offset = 0
    with open_regular(path, follow=False) as handle:
        # readline with a cap, so that a line of gigabytes is never held (bounded_lines does
        # the same; this loop is written out because replay reads 100,000 lines at start-up)
        for raw in iter(functools.partial(handle.readline, MAX_LINE + 1), b""):
            if not raw.endswith(b"\n"):
                if len(raw) <= MAX_LINE:
                    stats.torn += 1  # a write cut short by a crash: the event never happened
                    break
                while raw and not raw.endswith(b"\n"):  # far longer than any event of ours
                    offset += len(raw)
                    raw = handle.readline(1 << 20)
                stats.misshapen += 1
                offset += len(raw)
                stats.good_bytes = offset
                continue
            try:
                line = json.loads(raw)
            except (ValueError, RecursionError):
                stats.torn += 1  # kept, to not lose what follows it
                line = None
            event = decode(line) if isinstance(line, dict) else None
            if event is not None:
                stats.lines += 1
                yield offset, event
            elif line is not None:
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


def _line(event: Event) -> bytes:
    text = json.dumps(encode(event), ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode()


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

    async def record(self, event: Event) -> int:
        """Append one event, wait until it is fsynced, apply it; returns its line's offset."""
        if isinstance(event, Submitting) and not self.ledger.state(event.key).settled:
            raise WouldPayTwice(event.key)
        [offset] = await self._append([_line(event)])
        apply(self.ledger, event, offset)
        return offset

    async def record_many(self, events: Iterable[Event]) -> None:
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
