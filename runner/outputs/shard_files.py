"""Reading shards back: what each member of a written shard holds (sha256), so that a folder
whose journal was lost still proves which of its sharded images are there."""

from __future__ import annotations

import functools
import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from runner.outputs import arrow

SHARDS_DIR = "shards"


def member_of(path: str) -> tuple[str, str] | None:
    """``("shards/00003.tar", "KEY.png")`` for a record's path into a shard, else None."""
    shard, hash_sign, member = path.partition("#")
    return (shard, member) if hash_sign and shard.startswith(SHARDS_DIR + "/") else None


def member_sha256(shard: Path, member: str) -> str | None:
    """The sha256 of ``member`` in the written shard file ``shard``, or None."""
    try:
        stat = shard.stat()
    except OSError:
        return None
    return _digests(shard, stat.st_mtime_ns, stat.st_size).get(member)


def member_digests(shard: Path) -> dict[str, str]:
    """Every image member of a written shard file with its sha256 (empty: it does not open)."""
    try:
        stat = shard.stat()
    except OSError:
        return {}
    return _digests(shard, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _digests(shard: Path, mtime_ns: int, size: int) -> dict[str, str]:
    """Every image member's sha256 (cached by the file's identity: records come shard by
    shard, and a shard is read once)."""
    try:
        if shard.suffix == ".tar":
            return _tar_digests(shard)
        if shard.suffix == ".parquet":
            return _parquet_digests(shard)
    except (OSError, tarfile.TarError, ValueError):
        pass  # a shard that does not open proves nothing
    return {}


def _tar_digests(shard: Path) -> dict[str, str]:
    digests = {}
    with tarfile.open(shard) as tar:
        for info in tar:
            if info.isfile() and not info.name.endswith((".json", ".txt")):  # the image only
                handle = tar.extractfile(info)
                if handle is not None:
                    digests[info.name] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def _parquet_digests(shard: Path) -> dict[str, str]:
    pq = arrow.parquet("reading parquet shards")  # only parquet folders pay for the import

    digests = {}
    for batch in pq.ParquetFile(shard).iter_batches(columns=["image"], batch_size=100):
        for image in batch.column("image").to_pylist():
            if image and image.get("path") and image.get("bytes") is not None:
                digests[image["path"]] = hashlib.sha256(image["bytes"]).hexdigest()
    return digests


def read_member(shard: Path, member: str) -> bytes | None:
    """The bytes of one image member of a shard file, or None (missing, unreadable, cut
    short: a damaged shard gives up what it still holds whole)."""
    try:
        if shard.suffix == ".tar":
            with tarfile.open(shard) as tar:
                handle = tar.extractfile(member)
                return None if handle is None else handle.read()
        if shard.suffix == ".parquet":
            pq = arrow.parquet("reading parquet shards")
            for batch in pq.ParquetFile(shard).iter_batches(columns=["image"], batch_size=100):
                for image in batch.column("image").to_pylist():
                    if image and image.get("path") == member:
                        data = image.get("bytes")
                        return data if isinstance(data, bytes) else None
    except (OSError, tarfile.TarError, KeyError, ValueError, EOFError):
        return None
    return None


def read_members(handle: IO[bytes], suffix: str, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """The bytes of the image members ``wanted`` of one shard file (a ``.tar`` or a
    ``.parquet``, opened as ``handle``), one at a time; stops once all are found. A tar is
    read header by header, seeking past the other members; a parquet file by batches of its
    image column alone."""
    left = set(wanted)
    if not left:
        return
    if suffix == ".tar":
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                if info.name in left and info.isfile():
                    member = tar.extractfile(info)
                    if member is not None:
                        left.discard(info.name)
                        yield info.name, member.read()
                        if not left:
                            return
    elif suffix == ".parquet":
        pq = arrow.parquet("reading parquet shards")
        for batch in pq.ParquetFile(handle).iter_batches(columns=["image"], batch_size=16):
            for image in batch.column("image").to_pylist():
                path = image.get("path") if image else None
                if path in left and image.get("bytes") is not None:
                    left.discard(path)
                    yield path, image["bytes"]
                    if not left:
                        return
