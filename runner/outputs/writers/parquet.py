"""``--format parquet``: parquet shards written with pyarrow, one row per image.

The ``image`` column is Hugging Face's Image struct ``{bytes, path}``, and the schema's
``huggingface`` metadata says so, so ``datasets`` decodes it as an image. The record's fields
are columns; ``params`` and ``vars`` are JSON text (the same schema whatever each model took),
and each var is also a column of its own (``var_style``), from the manifest's var names.
Row groups hold ``ROW_GROUP`` images, the size ``datasets`` itself writes image data with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runner.outputs.shard_ledger import file_digest
from runner.outputs.writers.shards import Sample, ShardWriter

ROW_GROUP = 100


class ParquetWriter(ShardWriter):
    format = "parquet"
    suffix = ".parquet"

    def schema(self) -> Any:
        """The shards' schema (a pyarrow.Schema), with Hugging Face's features in its metadata."""
        import pyarrow as pa  # imported by the runs that write parquet only (40 MB of RSS)

        fields = [
            pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            pa.field("key", pa.string()),
            pa.field("index", pa.int64()),
            pa.field("name", pa.string()),
            pa.field("model", pa.string()),
            pa.field("prompt", pa.string()),
            pa.field("seed", pa.int64()),
            pa.field("params", pa.string()),
            pa.field("vars", pa.string()),
            pa.field("job_id", pa.string()),
            *(pa.field(f"var_{name}", pa.string()) for name in self.var_names),
        ]
        features: dict[str, Any] = {
            field.name: {"dtype": "string", "_type": "Value"} for field in fields
        }
        features["image"] = {"_type": "Image"}
        for name in ("index", "seed"):
            features[name] = {"dtype": "int64", "_type": "Value"}
        metadata = {"huggingface": json.dumps({"info": {"features": features}})}
        return pa.schema(fields, metadata=metadata)

    def write_shard(self, path: Path, samples: list[Sample]) -> tuple[int, str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self.schema()
        with pq.ParquetWriter(path, schema) as writer:
            rows: list[dict[str, Any]] = []
            for sample, image in self.intact_samples(samples):
                rows.append(self._row(sample, image))
                if len(rows) >= ROW_GROUP:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        return file_digest(path)  # read back: just written, so from the page cache

    def _row(self, sample: Sample, image: bytes) -> dict[str, Any]:
        fields = sample.fields
        variables = fields.get("vars") or {}
        row = {
            "image": {"bytes": image, "path": sample.key + sample.ext},
            **{name: fields.get(name) for name in ("key", "index", "name", "model", "prompt")},
            "seed": fields.get("seed"),
            "params": json.dumps(fields.get("params"), sort_keys=True, ensure_ascii=False),
            "vars": json.dumps(variables, sort_keys=True, ensure_ascii=False),
            "job_id": fields.get("job_id"),
        }
        for name in self.var_names:
            value = variables.get(name)
            row[f"var_{name}"] = None if value is None else str(value)
        return row
