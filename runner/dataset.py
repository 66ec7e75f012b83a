"""``metadata.jsonl`` in the Hugging Face ``imagefolder`` layout, from the results records.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` then yields each image with its prompt,
model, seed, width, height and the other request parameters.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from runner.records import RecordStatus

METADATA_NAME = "metadata.jsonl"


def metadata_rows(root: Path, records: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """One row per image file of every completed record (pure but for reading image headers)."""
    for record in records:
        if record.get("status") != RecordStatus.COMPLETED:
            continue
        params = dict(record.get("params") or {})
        for entry in record.get("files", []):
            path = (root / entry["path"]).resolve()
            if not path.is_relative_to(root.resolve()):
                continue  # a results file pointing outside its folder: not ours to read
            width, height = _size(path, params)
            yield {
                "file_name": entry["path"],
                "key": record["key"],
                "prompt": record["prompt"],
                "model": record["model"],
                "seed": record.get("seed"),
                "width": width,
                "height": height,
                "name": record.get("name"),
                # One text column keeps the schema the same whatever parameters each model took.
                "params": json.dumps(params, sort_keys=True, ensure_ascii=False),
                "job_id": record.get("job_id"),
            }


def _size(path: Path, params: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The image's size from its header, else the requested one (unreadable, or a header that
    claims more pixels than Pillow opens: nothing is decoded here either way)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except (OSError, Image.DecompressionBombError):
        return params.get("width"), params.get("height")


def metadata_lines(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
