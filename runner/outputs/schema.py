"""The one schema every format's rows share: metadata.jsonl (files), each parquet row and each
webdataset sample's KEY.json carry the same fields, with the same names and values, and the
dataset card declares them (``features``) so that ``datasets`` loads each format the same way.

A row is one image of a completed job:

- ``file``: where the image is, as results.jsonl names it (``images/0000/KEY.png``, or
  ``shards/00003.tar#KEY.png`` for a shard's member): the one field whose value depends on
  the format, and the link back to the job's record;
- ``key``, ``index``, ``name``, ``model``, ``prompt``, ``seed``, ``job_id``: the job's;
- ``width``, ``height``: the image's own size, read from its header (never decoded), else the
  size asked for;
- ``params``: the request parameters as JSON text (one text column whatever each model took);
- ``var_NAME``: each var of the manifest (a column of a prompts file, say) as text, empty where
  the job has no such var.

The image itself is the ``image`` column (files, parquet) or the KEY.png member (webdataset).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runner.state.records import ResultRecord

# The fields of every row, in order, with their dtype (the Hugging Face Value dtypes);
# the var_NAME columns follow, sorted.
FIELDS: tuple[tuple[str, str], ...] = (
    ("file", "string"),
    ("key", "string"),
    ("index", "int64"),
    ("name", "string"),
    ("model", "string"),
    ("prompt", "string"),
    ("seed", "int64"),
    ("width", "int64"),
    ("height", "int64"),
    ("params", "string"),
    ("job_id", "string"),
)
VAR_PREFIX = "var_"
# The image types a download is kept as (runner.outputs.images.image_extension): a webdataset
# sample's image member is KEY.png, KEY.jpg or KEY.webp.
IMAGE_TYPES = ("png", "jpg", "webp")


def var_column(name: str) -> str:
    return VAR_PREFIX + name


def columns(var_names: Iterable[str]) -> list[tuple[str, str]]:
    """Every field of a row with its dtype, the vars' after the fixed ones."""
    return [*FIELDS, *((var_column(name), "string") for name in sorted(set(var_names)))]


def job_fields(record: ResultRecord) -> dict[str, Any]:
    """The fields a row takes from its job's record (``vars`` still a mapping: ``row`` makes
    the var columns, once the manifest's var names are known)."""
    return {
        "key": record.key,
        "index": record.index,
        "name": record.name,
        "model": record.model,
        "prompt": record.prompt,
        "seed": record.seed,
        "params": record.params,
        "vars": record.vars,
        "job_id": record.job_id,
    }


def row(
    job: Mapping[str, Any],
    file: str,
    size: tuple[int | None, int | None],
    var_names: Sequence[str],
) -> dict[str, Any]:
    """One image's row: ``job`` as ``job_fields`` gives it, the image's place and size, and a
    var column for every name in ``var_names`` and in the job's own vars."""
    variables: Mapping[str, Any] = job.get("vars") or {}
    width, height = size
    fields: dict[str, Any] = {
        "file": file,
        "key": job.get("key"),
        "index": job.get("index"),
        "name": job.get("name"),
        "model": job.get("model"),
        "prompt": job.get("prompt"),
        "seed": job.get("seed"),
        "width": width,
        "height": height,
        "params": json.dumps(job.get("params") or {}, sort_keys=True, ensure_ascii=False),
        "job_id": job.get("job_id"),
    }
    for name in sorted({*var_names, *variables}):
        value = variables.get(name)
        fields[var_column(name)] = None if value is None else str(value)
    return fields


def requested_size(params: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The size a job asked for, where it asked for one in pixels."""
    width, height = params.get("width"), params.get("height")
    return (
        width if isinstance(width, int) else None,
        height if isinstance(height, int) else None,
    )
