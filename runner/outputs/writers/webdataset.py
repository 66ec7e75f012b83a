"""``--format webdataset``: tar shards, each sample ``KEY.png`` (or .jpg, .webp as it came),
``KEY.txt`` (its prompt, UTF-8: the caption webdataset loaders look for) and ``KEY.json`` (its
row of the one schema, ``runner.outputs.schema``: the fields metadata.jsonl and the parquet
columns carry, with the same names and values), in the order the jobs finished.

Written with the standard library's ``tarfile``, not webdataset's ``TarWriter``: a shard is
written to a hidden name, fsynced and renamed whole, which the library's writers (made for
streams and their own file naming) leave to the caller anyway, and a runtime dependency is
saved. The tests read the shards back with the ``webdataset`` library and ``datasets``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from runner.outputs.shard_ledger import HashingWriter
from runner.outputs.writers.shards import Sample, ShardWriter


class WebDatasetWriter(ShardWriter):
    format = "webdataset"
    suffix = ".tar"

    def write_shard(self, path: Path, samples: list[Sample]) -> tuple[int, str]:
        with open(path, "wb") as handle:
            hashing = HashingWriter(handle)
            with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for sample, image in self.intact_samples(samples):
                    row = sample.row(image, self.var_names)
                    _add(tar, sample.member, image)
                    _add(tar, sample.key + ".txt", str(row["prompt"] or "").encode())
                    _add(tar, sample.key + ".json", json.dumps(row, ensure_ascii=False).encode())
            handle.flush()
            os.fsync(handle.fileno())
        return hashing.size, hashing.digest.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
