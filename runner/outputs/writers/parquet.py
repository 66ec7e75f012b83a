"""``--format parquet``: parquet shards written with pyarrow, one row per image.

The ``image`` column is Hugging Face's Image struct ``{bytes, path}``, and the schema's
``huggingface`` metadata says so, so ``datasets`` decodes it as an image. The other columns are
the one schema's (``runner.outputs.schema``): the fields metadata.jsonl and the webdataset JSON
carry too, ``params`` as JSON text and a ``var_NAME`` column for each of the manifest's vars.
Row groups hold ``ROW_GROUP`` images, the size ``datasets`` itself writes image data with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runner.outputs import arrow
from runner.outputs.schema import columns
from runner.outputs.shard_ledger import file_digest
from runner.outputs.writers.shard_recovery import Sample
from runner.outputs.writers.shards import ShardWriter

ROW_GROUP = 100


class ParquetWriter(ShardWriter):
    format = "parquet"
    suffix = ".parquet"

    def schema(self) -> Any:
        """The shards' schema (a pyarrow.Schema), with Hugging Face's features in its metadata."""
        pa = arrow.pyarrow()  # imported by the runs that write parquet only (40 MB of RSS)

        types = {"string": pa.string(), "int64": pa.int64()}
        fields = [
            pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            *(pa.field(name, types[dtype]) for name, dtype in columns(self.var_names)),
        ]
        features: dict[str, Any] = {"image": {"_type": "Image"}}
        for name, dtype in columns(self.var_names):
            features[name] = {"dtype": dtype, "_type": "Value"}
        metadata = {"huggingface": json.dumps({"info": {"features": features}})}
        return pa.schema(fields, metadata=metadata)

    def write_shard(self, path: Path, samples: list[Sample]) -> tuple[int, str]:
        pa, pq = arrow.pyarrow(), arrow.parquet()
        schema = self.schema()
        with pq.ParquetWriter(path, schema) as writer:
            rows: list[dict[str, Any]] = []
            for sample, image in self.intact_samples(samples):
                row = sample.row(image, self.var_names)
                rows.append({"image": {"bytes": image, "path": sample.member}, **row})
                if len(rows) >= ROW_GROUP:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        return file_digest(path)  # read back: just written, so from the page cache
