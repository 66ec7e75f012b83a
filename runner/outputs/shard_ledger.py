"""OUT/.krea-batch/shards.jsonl: each sealed shard's size and sha256, appended and fsynced as
the shard is renamed into place, so that every later run can prove what it relies on (a stat
against the size) and ``krea-batch verify`` what it holds (the sha256).

A line is ``{"shard": "00003.tar", "size": N, "sha256": "…", "samples": M}`` when a shard is
sealed, or ``{"shard": "00003.tar", "damaged": "why"}`` when a check found it wrong (the next run
rebuilds it); the last line of a shard wins. A torn last line is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runner.files import bounded_lines, open_regular

CHUNK = 1 << 20
SHARD_LEDGER = "shards.jsonl"


@dataclass(frozen=True, slots=True)
class Sealed:
    """A shard as it was written."""

    name: str  # "00003.tar"
    size: int
    sha256: str
    samples: int = 0


class HashingWriter:
    """A binary file that hashes what is written to it (a shard's sha256 without reading it
    back). Only what ``tarfile`` asks of a file: write, tell, flush, close."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.flush()


def file_digest(path: Path, advance: Callable[[int], None] | None = None) -> tuple[int, str]:
    """The size and sha256 of a file, read in chunks (``advance``: told each chunk's size)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
    return size, digest.hexdigest()


class ShardLedger:
    """The sealed shards of one folder (read once, appended as shards are sealed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sealed: dict[str, Sealed] = {}
        self.damaged: dict[str, str] = {}  # shard name → why
        self._read()

    def _read(self) -> None:
        try:
            with open_regular(self.path, follow=False) as handle:
                lines = [line for line, _ in bounded_lines(handle, 1 << 16) if line]
        except OSError:
            return
        for line in lines:
            try:
                data = json.loads(line)
            except ValueError:
                continue  # a torn line: the shard it sealed is checked as unknown
            name = data.get("shard") if isinstance(data, dict) else None
            if not isinstance(name, str):
                continue
            if data.get("gone") is True:
                self.damaged.pop(name, None)
                self.sealed.pop(name, None)
                continue
            if isinstance(data.get("damaged"), str):
                self.damaged[name] = data["damaged"]
                self.sealed.pop(name, None)
                continue
            size, sha256 = data.get("size"), data.get("sha256")
            if type(size) is int and isinstance(sha256, str):
                samples = data.get("samples")
                self.sealed[name] = Sealed(
                    name, size, sha256, samples if type(samples) is int else 0
                )
                self.damaged.pop(name, None)

    def _append(self, data: dict[str, object]) -> None:
        line = (json.dumps(data, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def seal(self, sealed: Sealed) -> None:
        self._append(
            {
                "shard": sealed.name,
                "size": sealed.size,
                "sha256": sealed.sha256,
                "samples": sealed.samples,
            }
        )
        self.sealed[sealed.name] = sealed
        self.damaged.pop(sealed.name, None)

    def mark_damaged(self, name: str, why: str) -> None:
        self._append({"shard": name, "damaged": why})
        self.damaged[name] = why
        self.sealed.pop(name, None)

    def forget(self, name: str) -> None:
        """A shard that no longer exists (nothing of a damaged one was left to rebuild)."""
        self._append({"shard": name, "gone": True})
        self.damaged.pop(name, None)
        self.sealed.pop(name, None)
