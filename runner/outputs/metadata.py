"""``metadata.jsonl`` in the Hugging Face ``imagefolder`` layout, from the results records.

Each line is one image's row of the one schema (``runner.outputs.schema``) with its
``file_name``, which imagefolder turns into the ``image`` column; ``file`` keeps the same path
as a column of its own, as the shard formats have it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.outputs.images import image_size, inside
from runner.outputs.schema import job_fields, requested_size, row
from runner.state.records import RecordStatus, ResultRecord

MetadataRow = dict[str, Any]  # file_name, then the schema's fields (runner.outputs.schema)


def metadata_rows(
    root: Path, records: Iterable[ResultRecord], var_names: Sequence[str] = ()
) -> Iterator[MetadataRow]:
    """One row per image file of every completed record, with a var column for each of
    ``var_names`` (the manifest's) and of the record's own vars (pure but for reading image
    headers)."""
    for record in records:
        if record.status != RecordStatus.COMPLETED:
            continue
        job = job_fields(record)
        for entry in record.files:
            path = inside(root, entry.path)
            if path is None:
                continue  # a results file pointing outside its folder: not ours to read
            size = image_size(path) or requested_size(record.params)
            yield {"file_name": entry.path, **row(job, entry.path, size, var_names)}


def metadata_lines(rows: Iterable[MetadataRow]) -> Iterator[str]:
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
