"""File names of downloaded images from a template, kept inside the output folder.

A template such as ``{model}/{key}`` or ``{name}/{index:05d}`` names each image below
``images/``; the extension comes from the downloaded file. The default, ``{bucket}/{key}``,
keeps each folder under 10,000 files (``{bucket}`` is the job's index // 10,000). Field
values are reduced to safe characters, so no prompt, name or model can climb out of the
folder or hide a file.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from runner.errors import UsageError
from runner.jobspec import JobSpec

BUCKET_SIZE = 10_000  # the Hugging Face Hub takes fewer files than this in one folder
DEFAULT_TEMPLATE = "{bucket}/{key}"
FIELDS = ("key", "index", "bucket", "model", "name", "seed", "replica", "entry", "prompt")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(value: Any, limit: int = 80) -> str:
    """A value as a safe path segment: letters, digits, ``._-``; never empty, never dot-led."""
    text = _UNSAFE.sub("-", str(value)).strip("-.")[:limit].strip("-.")
    return text or "_"


def check_template(template: str) -> str:
    """The template without an image extension; a UsageError if it is unusable."""
    stem = template
    for suffix in _IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    try:
        parsed = list(string.Formatter().parse(stem))
    except ValueError as exc:
        raise UsageError(f"name template {template!r}: {exc}") from exc
    for _, field, _, _ in parsed:
        if field is not None and field not in FIELDS:
            raise UsageError(
                f"name template {template!r}: unknown field {{{field}}} "
                f"(fields: {', '.join(FIELDS)})"
            )
    literal = "".join(text for text, *_ in parsed)
    if stem.startswith("/") or ".." in literal.split("/") or "\\" in literal:
        raise UsageError(f"name template {template!r} must stay inside the output folder")
    if not any(field for _, field, _, _ in parsed):
        raise UsageError(f"name template {template!r} has no field: every job would get one name")
    return stem


def render_name(stem: str, spec: JobSpec) -> str:
    """The relative path (no extension) of a job's first image under ``images/``."""
    values = {
        "key": spec.key,
        "index": spec.index,
        "bucket": f"{spec.index // BUCKET_SIZE:04d}",  # a folder per 10,000 jobs
        "model": slug(spec.model),
        "name": slug(spec.name or spec.model),
        "seed": spec.seed if spec.seed is not None else "noseed",
        "replica": spec.replica,
        "entry": spec.entry,
        "prompt": slug(spec.prompt, 60),
    }
    text = stem.format(**values)
    parts = [
        slug(part, 120) for part in PurePosixPath(text).parts if part not in ("/", "", ".", "..")
    ]
    return "/".join(parts) or spec.key


def add_name(names: dict[str, int], stem: str, template: str, spec: JobSpec) -> None:
    """Name ``spec``'s image in ``names`` (name → job index); a UsageError when another job
    has that name already."""
    name = render_name(stem, spec)
    if name in names:
        raise UsageError(
            f"the name template {template!r} gives jobs {names[name]} and {spec.index} the "
            f"same file name images/{name}: add {{key}} or {{index}}"
        )
    names[name] = spec.index


SUFFIX_ROOM = len("-99.jpeg")  # the later images of a job and the extension
_NUMBERED = re.compile(r"(.+)-(\d+)")


def check_names(names: Mapping[str, int], template: str, images: Path) -> None:
    """Refuse, before anything is sent, file names that could not all be written side by side.

    A job's later images are named NAME-1, NAME-2…, so a job whose own name is another's
    plus ``-N`` would overwrite one of its images; and every name, suffix included, must fit
    the file system's limits on a segment (255 bytes) and a whole path.
    """
    path_max = _path_max(images)
    for name, index in names.items():
        numbered = _NUMBERED.fullmatch(name)
        if numbered and numbered.group(1) in names:
            other = names[numbered.group(1)]
            raise UsageError(
                f"the name template {template!r} names job {index} images/{name}, the name of "
                f"job {other}'s image {numbered.group(2)}: add {{key}} or {{index}}"
            )
        too_long = any(len(part.encode()) + SUFFIX_ROOM > 255 for part in name.split("/"))
        if too_long or len(str(images / name).encode()) + SUFFIX_ROOM > path_max:
            raise UsageError(
                f"the name template {template!r} gives job {index} a file name too long for "
                f"the file system: images/{name[:60]}…"
            )


def crowded_folders(names: Mapping[str, int]) -> dict[str, int]:
    """The folders the names would fill with BUCKET_SIZE files or more, and how many."""
    counts: dict[str, int] = {}
    for name in names:
        folder = name.rpartition("/")[0]
        counts[folder] = counts.get(folder, 0) + 1
    return {folder: n for folder, n in counts.items() if n >= BUCKET_SIZE}


def _path_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if folder.exists() else folder.parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096
