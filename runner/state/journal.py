"""The journal: an append-only, fsynced log of what was sent and what finished, per job key.

It is the output folder's memory across crashes. Each line is one event of
``runner.state.events`` (Submitting, Submitted, Lost, Retry, Ambiguous, Released, Done,
Asset), serialised there and nowhere else.

``RunLedger.apply`` (runner.state.ledger) is the one place where an event changes a job's
state: replay folds the file with it, and a live run records every event through
``Journal.record``, which appends the line and then applies it (``Journal.note`` applies the
events the journal does not keep, which change only this run's figures).

Appends from many tasks are grouped: one write and one fsync covers every line waiting, and
each appender returns only once its line is on disk. A torn last line (a crash
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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio

from runner import jsontext
from runner.errors import DiskError, WouldPayTwice
from runner.files import open_regular
from runner.state.events import Event, Submitting, decode, encode
from runner.state.ledger import RunLedger, apply_to_states, fold
from runner.state.records import ResultRecord, parse_record
from runner.state.run_events import RunEvent

log = logging.getLogger(__name__)

MAX_LINE = 16 << 20  # a journal line longer than this is no event of ours


@dataclass(slots=True)
class ReplayStats:
    """What reading a journal file found beyond its events."""

    lines: int = 0
    torn: int = 0
    misshapen: int = 0  # whole JSON lines that are not events of this version
    torn_inside: int = 0  # torn lines with whole lines after them: damage, not a crash's tail
    good_bytes: int = 0  # the length of the journal up to its last whole line


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
                stats.torn_inside += 1
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
        ledger: RunLedger,
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
        self.replay = ReplayStats()  # what reading the file found (set by ``open``)

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
        journal = cls(path, open_regular(path, follow=False, write=True), ledger, offload)
        journal.replay = stats
        return journal

    async def record(self, event: Event) -> int:
        """Append one event, wait until it is fsynced, apply it; returns its line's offset."""
        if isinstance(event, Submitting) and not self.ledger.state(event.key).settled:
            raise WouldPayTwice(event.key)
        [offset] = await self._append([_line(event)])
        self.ledger.apply(event, offset)
        return offset

    def record_soon(self, event: Event) -> int:
        """Append one event and apply it now; it reaches the disk with the next flush (any
        ``record`` or ``flush``), not before this returns. For a line whose loss in a power
        cut costs no money: the caller makes sure nothing depends on it until then."""
        if isinstance(event, Submitting):
            raise ValueError("a submitting line is written ahead, never soon")
        line = _line(event)
        offset = self._end
        self._end += len(line)
        self._pending.append(line)
        self.ledger.apply(event, offset)
        return offset

    async def record_many(self, events: Iterable[Event], *, earlier: bool = False) -> None:
        """Append several events in one write and one fsync, then apply them in order.

        ``earlier``: they tell what an earlier run did (a folder rebuilt from its results), so
        they change the jobs' states and not this run's figures, as a replay does.
        """
        events = list(events)
        offsets = await self._append([_line(event) for event in events])
        for event, offset in zip(events, offsets, strict=True):
            if earlier:
                apply_to_states(self.ledger, event, offset)
            else:
                self.ledger.apply(event, offset)

    def note(self, event: RunEvent) -> None:
        """Apply an event this run's figures need and the folder does not keep."""
        self.ledger.apply(event)

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
        """Write what ``record_soon`` left waiting, then close the file."""
        try:
            if self._pending and not self._flushing:
                lines, self._pending = self._pending, []
                self._write(b"".join(lines))
        except OSError as exc:  # what was lost is found again: a pending POST is matched
            log.warning("journal %s: could not write its last lines: %s", self.path, exc)
        finally:
            self._handle.close()
