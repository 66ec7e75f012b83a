"""File names of downloaded images from a template, kept inside the output folder.

A template such as ``{model}/{key}`` or ``{name}/{index:05d}`` names each image below
``images/``; the extension comes from the downloaded file. Field values are reduced to safe
characters, so no prompt, name or model can climb out of the folder or hide a file.
"""

from __future__ import annotations

import re
import string
from pathlib import PurePosixPath
from typing import Any

from runner.errors import UsageError
from runner.jobspec import JobSpec

DEFAULT_TEMPLATE = "{key}"
FIELDS = ("key", "index", "model", "name", "seed", "replica", "entry", "prompt")
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
