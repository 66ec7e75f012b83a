"""results.jsonl, written in one place: one line per finished job, appended as it finishes.

The journal's ``done`` lines hold the same records, and are what a crash leaves certain. So a
run starts by checking that results.jsonl names exactly the jobs the journal has finished,
each once (a crash between the two writes, a torn line, a job finished again with
``--retry-failed``, a hand-edited file): when it does not, it is rewritten from the journal,
once, before anything is appended. A run that finishes a job a second time rewrites it at its
end. Otherwise each record is written once, in the order the jobs finished.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from runner import jsontext
from runner.errors import DiskError, UsageError
from runner.files import UnusableFile, open_regular, read_regular
from runner.outputs.atomic import write_atomic
from runner.state.records import ResultRecord, record_line

_KEY_PREFIX = b'{"key": "'  # how record_line starts every record


def key_digest(keys: Iterable[str]) -> tuple[int, int]:
    """How many keys, and a digest of them that ignores their order (a sum of hashes, so two
    lists of the same keys agree and a key twice in place of another does not). Python's own
    string hash: both sides are computed in the same process, which is all it is used for."""
    count = total = 0
    for key in keys:
        count += 1
        total += hash(key)
    return count, total % (1 << 64)


class _NotOurs(Exception):
    pass


def _keys_in(path: Path) -> Iterator[str]:
    if not path.exists() and not path.is_symlink():
        return
    with open_regular(path, follow=False) as handle:
        for raw in iter(functools.partial(handle.readline, 16 << 20), b""):
            if not raw.endswith(b"\n"):
                raise _NotOurs
            if raw.startswith(_KEY_PREFIX):
                end = raw.find(b'"', len(_KEY_PREFIX))
                key = raw[len(_KEY_PREFIX) : end]
                if end > 0 and b"\\" not in key:
                    yield key.decode("utf-8", errors="replace")
                    continue
            try:
                line = json.loads(raw)
            except (ValueError, RecursionError):
                raise _NotOurs from None
            if not isinstance(line, dict) or not isinstance(line.get("key"), str):
                raise _NotOurs
            yield line["key"]


def file_digest(path: Path) -> tuple[int, int] | None:
    """``key_digest`` of a results.jsonl's keys, or None when it holds a line not ours."""
    try:
        return key_digest(_keys_in(path))
    except _NotOurs:
        return None


class ResultsLog:
    """The one writer of results.jsonl (see the module docstring)."""

    def __init__(self, path: Path, stamp: Path | None = None) -> None:
        self.path = path
        self.stamp = stamp  # the file's size and time, and the journal's size, when they agreed
        self._handle: BinaryIO | None = None
        self.stale = False  # a job finished again: its earlier line is to be dropped at the end

    def open(
        self,
        finished: Callable[[], tuple[int, int]],
        records: Iterable[ResultRecord],
        journal_size: int | None = None,
    ) -> bool:
        """Check the file against ``finished()`` (``key_digest`` of the journal's finished
        keys) unless neither file changed since they last agreed; rewrite it from ``records``
        when they disagree. Returns whether it was rewritten."""
        if not self._unchanged(journal_size) and file_digest(self.path) != finished():
            self.rewrite(records)
            return True
        self._handle = self._open()
        return False

    def _sizes(self, journal_size: int | None) -> list[int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return None if journal_size is None else [stat.st_size, stat.st_mtime_ns, journal_size]

    def _unchanged(self, journal_size: int | None) -> bool:
        sizes = self._sizes(journal_size)
        if self.stamp is None or sizes is None:
            return False
        try:
            return bool(jsontext.loads(read_regular(self.stamp, 4096)) == sizes)
        except (OSError, ValueError):
            return False

    def _open(self) -> BinaryIO:
        try:
            return open_regular(self.path, follow=False, write=True)
        except UnusableFile as exc:
            raise UsageError(f"{self.path} {exc.strerror}") from exc

    def append(self, record: ResultRecord, again: bool = False) -> None:
        """Add a finished job's record (``again``: the job had finished before, in a record
        this one replaces)."""
        self.stale = self.stale or again
        if self._handle is None:
            self._handle = self._open()
        try:
            self._handle.write(record_line(record).encode())
            self._handle.flush()
        except OSError as exc:
            raise DiskError(str(self.path.parent), exc) from exc

    def rewrite(self, records: Iterable[ResultRecord]) -> int:
        """Replace the file with exactly ``records`` (streamed, atomically); returns how many."""
        count = 0

        def lines() -> Iterator[str]:
            nonlocal count
            for record in records:
                count += 1
                yield record_line(record)

        self.close()
        write_atomic(self.path, lines())  # the next append opens it again
        self.stale = False
        return count

    def close(self, journal_size: int | None = None) -> None:
        """Close the file; with ``journal_size`` (the run's journal, closed), note that the two
        agree as they stand, so the next run need not read them to know it."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        sizes = self._sizes(journal_size)
        if self.stamp is not None and sizes is not None and not self.stale:
            write_atomic(self.stamp, json.dumps(sizes), durable=False)
