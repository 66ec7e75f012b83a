"""OUT/README.md: a dataset card the Hugging Face Hub and ``datasets.load_dataset(OUT)`` take
as it is: its YAML names the data files, so one ``train`` split holds every row whatever the
folder names say (``flux-1-dev/`` is no "dev" split), and the card says what made the data."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.outputs.atomic import write_atomic
from runner.outputs.licences import NOT_PUBLISHED, licence_of, one_licence
from runner.outputs.schema import IMAGE_TYPES, columns

_DATA_FILES = {
    # images/_unmatched/ holds the candidates of ambiguous jobs: no rows of their own.
    "files": ["metadata.jsonl", "images/[!_]*", "images/[!_]*/**"],
    "webdataset": ["shards/*.tar"],
    "parquet": ["shards/*.parquet"],
}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(rows: int) -> str:
    return next((label for bound, label in _SIZES if rows < bound), "1M<n<10M")


MARK = "- krea-batch\n"  # a card with this tag is ours to rewrite; any other README is the user's


def dataset_card(
    format: str,
    rows: int,
    models: Sequence[str],
    summary: Mapping[str, Any],
    *,
    var_names: Sequence[str] | None = None,
) -> str:
    """The card's text for ``rows`` completed jobs (pure). With ``var_names`` (the manifest's
    vars, so every column is known) its YAML declares the rows' features; without, ``datasets``
    infers them from the data.

    The features go under ``dataset_info`` (what the Hub shows, and what ``datasets`` gives the
    webdataset and parquet builders) and, for files and parquet, on the config too: imagefolder
    takes them only from there, else it infers each column's type from the metadata (a column
    of nulls, ``name`` when no job is named, would be no string column)."""
    return _front_matter(format, rows, models, var_names) + _body(
        format, rows, models, summary, var_names
    )


def _front_matter(
    format: str, rows: int, models: Sequence[str], var_names: Sequence[str] | None
) -> str:
    """The card's YAML: its data files, features, licences and Hub metadata."""
    paths = "".join(f'    - "{path}"\n' for path in _DATA_FILES[format])
    info = config = ""
    if var_names is not None:
        declared = features(format, var_names)
        info = "dataset_info:\n  features:\n" + _yaml_list(declared, "  ")
        if format != "webdataset":  # its builder's config takes no features
            config = "  features:\n" + _yaml_list(declared, "  ")
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path:\n"
        f"{paths}"
        f"{config}"
        f"{info}"
        f"{_licence_yaml(models)}"
        "task_categories:\n- text-to-image\n"
        f"size_categories:\n- {size_category(rows)}\n"
        f"tags:\n- synthetic\n{MARK}"
        "---\n\n"
    )


def _body(
    format: str,
    rows: int,
    models: Sequence[str],
    summary: Mapping[str, Any],
    var_names: Sequence[str] | None,
) -> str:
    """The card's text: what the dataset is, how to load it and upload it."""
    model_list = ", ".join(models) or "none yet"
    loader = {
        "files": "the images with metadata.jsonl (the imagefolder layout)",
        "webdataset": "WebDataset tar shards: KEY.png (or .jpg, .webp), KEY.txt (the prompt) "
        "and KEY.json (the row's fields)",
        "parquet": "parquet shards with an `image` column ({bytes, path})",
    }[format]
    return (
        "# Generated images\n\n"
        f"Images of {rows:,} text-to-image jobs, made with krea-batch on the Krea API "
        f"(models: {model_list}). Format: {loader}. Each row carries its prompt, model, "
        "seed, request parameters (`params`, JSON), the manifest's vars and the job's id.\n\n"
        "```python\n"
        "from datasets import load_dataset\n"
        'ds = load_dataset("path/to/this/folder")  # or "user/name" once on the Hub\n'
        "```\n\n"
        f"{_columns_text(format, var_names)}"
        f"{_licences_text(models)}"
        "Upload it as it is (the run's own state stays behind):\n\n"
        "```\n"
        'hf upload user/name . --repo-type dataset --exclude ".krea-batch/*" '
        '--exclude "status.json"\n'
        "```\n\n"
        f"Run: {summary.get('ended_at') or 'not finished'}; "
        f"estimated spend ${summary.get('estimated_spend_usd') or 0:g} "
        f"+ {summary.get('estimated_spend_units') or 0:g} compute units.\n"
    )


def features(format: str, var_names: Sequence[str]) -> list[tuple[str, Any]]:
    """The rows' features, as ``datasets`` yields them for ``format``: (name, dtype), a struct
    being a list of them. webdataset's builder makes a column of each member's extension: the
    image (one column per image type, empty where a sample's image is of another), ``txt``,
    ``json`` (the row, a struct) and its own ``__key__`` and ``__url__``."""
    fields: list[tuple[str, Any]] = list(columns(var_names))
    if format != "webdataset":
        return [("image", "image"), *fields]
    return [
        *((ext, "image") for ext in IMAGE_TYPES),
        ("txt", "string"),
        ("json", fields),
        ("__key__", "string"),
        ("__url__", "string"),
    ]


def _yaml_list(fields: list[tuple[str, Any]], indent: str) -> str:
    lines = []
    for name, dtype in fields:
        lines.append(f"{indent}- name: {json.dumps(name, ensure_ascii=False)}\n")
        if isinstance(dtype, list):
            lines.append(f"{indent}  struct:\n{_yaml_list(dtype, indent + '  ')}")
        else:
            lines.append(f"{indent}  dtype: {dtype}\n")
    return "".join(lines)


def _licence_yaml(models: Sequence[str]) -> str:
    """``license:``: the one licence that covers every model, else ``other`` (each model's
    in the text); none while no model is known."""
    if not models:
        return ""
    licence = one_licence(list(models))
    if licence is None:
        return "license: other\n"
    text = f"license: {licence.hub_id}\n"
    if licence.hub_name:
        text += f"license_name: {licence.hub_name}\nlicense_link: {licence.link}\n"
    return text


def _licences_text(models: Sequence[str]) -> str:
    if not models:
        return ""
    lines = []
    for model in models:
        licence = licence_of(model)
        said = NOT_PUBLISHED if licence is None else f"[{licence.name}]({licence.link})"
        lines.append(f"- `{model}`: {said}\n")
    return "## Models and licences\n\n" + "".join(lines) + "\n"


def _columns_text(format: str, var_names: Sequence[str] | None) -> str:
    names = [name for name, _ in columns(var_names or ())]
    listed = ", ".join(f"`{name}`" for name in names)
    if var_names is None:
        listed += ", `var_NAME` for each var"
    where = {
        "files": "Columns: `image`, ",
        "parquet": "Columns: `image`, ",
        "webdataset": "Each sample's KEY.json holds ",
    }[format]
    return (
        f"{where}{listed}. `file` is the image's place as results.jsonl names it, `params` "
        "the request's parameters as JSON, `width` and `height` the image's own size.\n\n"
    )


def write_card(path: Path, text: str) -> bool:
    """Write the card unless the folder holds a README of someone else's; returns whether."""
    try:
        if MARK not in path.read_text(encoding="utf-8"):
            return False
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        return False
    write_atomic(path, text)
    return True
