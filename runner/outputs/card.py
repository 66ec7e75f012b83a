"""OUT/README.md: a dataset card the Hugging Face Hub and ``datasets.load_dataset(OUT)`` take
as it is: its YAML names the data files, so one ``train`` split holds every row whatever the
folder names say (``flux-1-dev/`` is no "dev" split), and the card says what made the data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.outputs.atomic import write_atomic

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


def dataset_card(format: str, rows: int, models: Sequence[str], summary: Mapping[str, Any]) -> str:
    """The card's text for ``rows`` completed jobs (pure)."""
    paths = "".join(f'    - "{path}"\n' for path in _DATA_FILES[format])
    model_list = ", ".join(models) or "none yet"
    loader = {
        "files": "the images with metadata.jsonl (the imagefolder layout)",
        "webdataset": "WebDataset tar shards: KEY.png (or .jpg, .webp) with KEY.json",
        "parquet": "parquet shards with an `image` column ({bytes, path})",
    }[format]
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path:\n"
        f"{paths}"
        "task_categories:\n- text-to-image\n"
        f"size_categories:\n- {size_category(rows)}\n"
        f"tags:\n- synthetic\n{MARK}"
        "---\n\n"
        "# Generated images\n\n"
        f"Images of {rows:,} text-to-image jobs, made with krea-batch on the Krea API "
        f"(models: {model_list}). Format: {loader}. Each row carries its prompt, model, "
        "seed, request parameters (`params`, JSON), the manifest's vars and the job's id.\n\n"
        "```python\n"
        "from datasets import load_dataset\n"
        'ds = load_dataset("path/to/this/folder")  # or "user/name" once on the Hub\n'
        "```\n\n"
        "Upload it as it is (the run's own state stays behind):\n\n"
        "```\n"
        'hf upload user/name . --repo-type dataset --exclude ".krea-batch/*" '
        '--exclude "status.json"\n'
        "```\n\n"
        f"Run: {summary.get('ended_at') or 'not finished'}; "
        f"estimated spend ${summary.get('estimated_spend_usd') or 0:g} "
        f"+ {summary.get('estimated_spend_units') or 0:g} compute units.\n"
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
