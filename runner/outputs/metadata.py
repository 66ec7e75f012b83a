"""``metadata.jsonl`` in the Hugging Face ``imagefolder`` layout, from the results records.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` then yields each image with its prompt,
model, seed, width, height and the other request parameters.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

from PIL import Image

from runner.outputs.images import inside
from runner.outputs.records import RecordStatus, ResultRecord


class MetadataRow(TypedDict, total=False):
    file_name: str
    key: str
    prompt: str
    model: str
    seed: int | None
    width: int | None
    height: int | None
    name: str | None
    params: str  # JSON: one text column keeps the schema the same whatever each model took
    job_id: str | None
    # and var_NAME: each var of the job (a column of its prompts file, say), as text


def metadata_rows(root: Path, records: Iterable[ResultRecord]) -> Iterator[MetadataRow]:
    """One row per image file of every completed record (pure but for reading image headers)."""
    for record in records:
        if record["status"] != RecordStatus.COMPLETED:
            continue
        params = record["params"]
        for entry in record["files"]:
            path = inside(root, entry["path"])
            if path is None:
                continue  # a results file pointing outside its folder: not ours to read
            width, height = _size(path, params)
            row: MetadataRow = {
                "file_name": entry["path"],
                "key": record["key"],
                "prompt": record["prompt"],
                "model": record["model"],
                "seed": record["seed"],
                "width": width,
                "height": height,
                "name": record["name"],
                "params": json.dumps(params, sort_keys=True, ensure_ascii=False),
                "job_id": record["job_id"],
            }
            for name, value in record["vars"].items():
                row[f"var_{name}"] = str(value)  # type: ignore[literal-required]
            yield row


def _size(path: Path, params: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The image's size from its header, else the requested one (unreadable, or a header that
    claims more pixels than Pillow opens: nothing is decoded here either way)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except (OSError, Image.DecompressionBombError):
        width, height = params.get("width"), params.get("height")
        return (
            width if isinstance(width, int) else None,
            height if isinstance(height, int) else None,
        )


def metadata_lines(rows: Iterable[MetadataRow]) -> Iterator[str]:
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
