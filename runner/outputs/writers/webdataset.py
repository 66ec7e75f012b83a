"""``--format webdataset``: tar shards, each sample ``KEY.png`` (or .jpg, .webp as it came),
``KEY.txt`` (its prompt, UTF-8: the caption webdataset loaders look for) and ``KEY.json`` (its
row of the one schema, ``runner.outputs.schema``: the fields metadata.jsonl and the parquet
columns carry, with the same names and values), in the order the jobs finished.

A shard is written to a hidden name, fsynced and renamed whole (webdataset's ``TarWriter``,
made for streams and its own naming, leaves that to the caller anyway, and a runtime
dependency is saved). Members are plain POSIX tar entries whose 512-byte headers are built
here: ``tarfile`` builds each in Python at about 25 µs, which on the shard thread took the
event loop's time (three members a sample); a name that is not short ASCII gets ``tarfile``'s
own header. The tests read the shards back with ``tarfile``, the ``webdataset`` library and
``datasets``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from runner.outputs.writers.shard_recovery import Sample
from runner.outputs.writers.shards import ShardWriter

BLOCK = 512
RECORD = 20 * BLOCK  # a tar file is a whole number of records, as tarfile writes it


class WebDatasetWriter(ShardWriter):
    format = "webdataset"
    suffix = ".tar"

    def write_shard(self, path: Path, samples: list[Sample]) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as handle:
            for chunk in self._tar(samples):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        return size, digest.hexdigest()

    def _tar(self, samples: list[Sample]) -> Iterator[bytes]:
        """The shard's bytes, member by member, then the end-of-archive blocks."""
        size = 0
        for sample, image in self.intact_samples(samples):
            row = sample.row(image, self.var_names)
            caption = str(row["prompt"] or "").encode()
            text = json.dumps(row, ensure_ascii=False).encode()
            for name, data in (
                (sample.member, image),
                (sample.key + ".txt", caption),
                (sample.key + ".json", text),
            ):
                member = header(name, len(data)) + data + padding(len(data))
                size += len(member)
                yield member
        end = 2 * BLOCK
        yield b"\0" * (end + (-(size + end) % RECORD))


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def header(name: str, size: int) -> bytes:
    """A regular file's POSIX (ustar) header: mode 0644, owner 0, time 0, as ``tarfile``
    writes a ``TarInfo`` left at its defaults."""
    encoded = name.encode("ascii", "replace")
    if len(encoded) >= 100 or not name.isascii():
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        return info.tobuf(tarfile.PAX_FORMAT)
    fields = (
        encoded.ljust(100, b"\0"),
        b"0000644\0",  # mode
        b"0000000\0",  # uid
        b"0000000\0",  # gid
        b"%011o\0" % size,
        b"00000000000\0",  # mtime
        b" " * 8,  # the checksum, counted as spaces
        b"0",  # a regular file
        b"\0" * 100,  # link name
        b"ustar\x0000",
        b"\0" * 64,  # owner and group names
        b"\0" * 16,  # device numbers (none: a regular file)
        b"\0" * 155,  # name prefix
    )
    block = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = b"%06o\0 " % sum(block)
    return block[:148] + checksum + block[156:]
