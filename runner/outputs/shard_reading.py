"""Reading written shards and images back in one pass each: size, whole-file sha256, and each
image member's sha256, whatever the file holds (what cannot be read is said, never raised)."""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from runner.outputs import arrow
from runner.outputs.shard_ledger import CHUNK, Sealed, file_digest


@dataclass(frozen=True, slots=True)
class Expected:
    key: str
    job_id: str | None
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ShardRead:
    size: int
    sha256: str
    members: dict[str, str | None]  # image member → its sha256 (None: not read)
    error: str | None  # why it could not be read to its end


class _HashingReader:
    """A file read once, start to end, hashed on the way (what tarfile's stream mode reads)."""

    def __init__(self, handle: IO[bytes], advance: Callable[[int], None]) -> None:
        self.handle = handle
        self.advance = advance
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        self.advance(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


_UNREADABLE = (OSError, EOFError, ValueError, tarfile.TarError, zlib.error)


def read_tar(path: Path, advance: Callable[[int], None]) -> ShardRead:
    """One pass over a tar shard: the whole file's size and sha256, and each image member's
    sha256 up to where it stops making sense."""
    members: dict[str, str | None] = {}
    error = None
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the drain
    except OSError as exc:
        return ShardRead(0, "", {}, f"cannot open it: {exc.strerror or exc}")
    with handle:
        reader = _HashingReader(handle, advance)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    if not info.isfile() or info.name.endswith((".json", ".txt")):
                        continue
                    extracted = tar.extractfile(info)
                    if extracted is None:
                        continue
                    digest = hashlib.sha256()
                    while chunk := extracted.read(CHUNK):
                        digest.update(chunk)
                    members[info.name] = digest.hexdigest()
        except _UNREADABLE as exc:
            error = str(exc) or type(exc).__name__
        try:
            reader.drain()
        except OSError as exc:
            error = error or f"cannot read it: {exc.strerror or exc}"
    return ShardRead(reader.size, reader.digest.hexdigest(), members, error)


def read_parquet(path: Path, advance: Callable[[int], None], sealed: Sealed | None) -> ShardRead:
    """A parquet shard's size and sha256; its members' names when it is as sealed, else each
    image member's sha256 (a second read, only for a shard that is not)."""
    try:
        size, sha256 = file_digest(path, advance)
    except OSError as exc:
        return ShardRead(0, "", {}, f"cannot read it: {exc.strerror or exc}")
    whole = sealed is not None and sealed.sha256 == sha256 and sealed.size == size
    members: dict[str, str | None] = {}
    error = None
    pq = arrow.parquet("verifying parquet shards")  # outside the try: missing is no damage
    try:
        column = "image.path" if whole else "image"
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=100):
            for image in batch.column(0).to_pylist():
                if not isinstance(image, dict) or not isinstance(image.get("path"), str):
                    continue
                data = image.get("bytes")
                if whole:
                    members[image["path"]] = None
                elif isinstance(data, bytes):
                    members[image["path"]] = hashlib.sha256(data).hexdigest()
    except Exception as exc:  # pyarrow's errors are many (ArrowInvalid, OSError, KeyError…)
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ShardRead(size, sha256, members, error)


def file_problem(path: Path, expected: Expected, advance: Callable[[int], None]) -> str | None:
    """Why a file is not the one recorded (None: it is)."""
    try:
        if path.is_symlink() or not path.is_file():
            advance(expected.size)
            return "missing" if not path.exists() else "missing: not a regular file"
        size, sha256 = file_digest(path, advance)
    except OSError as exc:
        return f"missing: cannot read it ({exc.strerror or exc})"
    if size != expected.size:
        return f"changed: {size:,} bytes where {expected.size:,} were recorded"
    if sha256 != expected.sha256:
        return "changed: its sha256 is not the one recorded"
    return None
