"""File names of downloaded images from a template, kept inside the output folder.

A template such as ``{model}/{key}`` or ``{name}/{index:05d}`` names each image below
``images/``; the extension comes from the downloaded file. The default, ``{bucket}/{key}``,
keeps each folder under 10,000 files (``{bucket}`` is the job's index // 10,000). Field
values are reduced to safe characters, so no prompt, name or model can climb out of the
folder or hide a file.
"""

from __future__ import annotations

import functools
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from runner.errors import UsageError
from runner.integers import parse_int
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
    """The template without an image extension; a UsageError if it is unusable for any job.

    Each field is a bare name of FIELDS with at most a format spec that suits its kind of
    value (``{index:05d}``, ``{prompt:.20}``): no conversion (``!r``), no attribute or index
    lookup (``{prompt.upper}``, ``{prompt[0]}``), no field inside a spec, no width past
    MAX_WIDTH. What only a given job can break (``{seed:05d}`` for a job without a seed;
    a bare ``{seed}`` is ``noseed`` there) is checked when the job is named (``render_name``),
    which plan and run do for every job before anything is sent.
    """
    stem = template
    for suffix in _IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    fields = _fields(template, stem)
    literal = "".join(text for text, *_ in string.Formatter().parse(stem))
    if stem.startswith("/") or ".." in literal.split("/") or "\\" in literal:
        raise UsageError(f"name template {template!r} must stay inside the output folder")
    if not fields:
        raise UsageError(f"name template {template!r} has no field: every job would get one name")
    return stem


MAX_WIDTH = 255  # a width or precision past a file name's longest segment makes no sense
_SAMPLES: dict[str, object] = {  # a value of each field's kind, to try a format spec on
    "key": "0123456789abcdef",
    "index": 0,
    "bucket": "0000",
    "model": "flux-1-dev",
    "name": "name",
    "seed": 0,
    "replica": 0,
    "entry": 0,
    "prompt": "a prompt",
}


@functools.lru_cache(maxsize=64)
def _fields(template: str, stem: str) -> dict[str, bool]:
    """The fields ``stem`` names (each with whether a format spec follows it anywhere),
    each checked as ``check_template`` says."""
    try:
        parsed = list(string.Formatter().parse(stem))
    except ValueError as exc:  # a lone brace, an unfinished field
        raise UsageError(f"name template {template!r}: {exc}") from exc
    fields: dict[str, bool] = {}
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        where = f"name template {template!r}: {{{field}"
        if field not in FIELDS:
            base = re.split(r"[.\[]", field, maxsplit=1)[0]
            if base in FIELDS:
                raise UsageError(
                    f"{where}}}: no attribute or index lookup, only the field {{{base}}}"
                )
            raise UsageError(f"{where}}}: unknown field (fields: {', '.join(FIELDS)})")
        if conversion is not None:
            raise UsageError(f"{where}!{conversion}}}: no conversion, only {{{field}}}")
        _check_spec(f"{where}:{spec}}}", field, spec or "")
        fields[field] = fields.get(field, False) or bool(spec)
    return fields


def _check_spec(where: str, field: str, spec: str) -> None:
    if not spec:
        return
    if "{" in spec or "}" in spec:
        raise UsageError(f"{where}: a format spec holds no field")
    if not spec.isascii() or not spec.isprintable():
        raise UsageError(f"{where}: a format spec of visible ASCII only")
    for digits in re.findall(r"[0-9]+", spec):
        parse_int(digits, f"{where}: width or precision", maximum=MAX_WIDTH)
    sample = _SAMPLES[field]
    try:
        format(sample, spec)
    except (ValueError, TypeError) as exc:
        kind = "a number" if isinstance(sample, int) else "a text"
        raise UsageError(
            f"{where}: {{{field}}} is {kind}, which this format spec does not fit ({exc})"
        ) from None


def render_name(stem: str, spec: JobSpec) -> str:
    """The relative path (no extension) of a job's first image under ``images/``; a
    UsageError naming the job's entry and model when the template does not fit this job."""
    fields = _fields(stem, stem)
    where = f"name template {stem!r}: jobs[{spec.entry}] ({spec.model})"
    if fields.get("seed") and spec.seed is None:  # a bare {seed} is "noseed"
        raise UsageError(
            f"{where}: the job sends no seed (its model takes none, or the entry gives none), "
            "so {seed} has no number to format: use {seed} alone (it is 'noseed' for such "
            "jobs), {replica} or {key}"
        )
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
    try:
        text = stem.format(**values)
    except (ValueError, TypeError, OverflowError) as exc:  # {index:c} past chr's range
        raise UsageError(f"{where}: {exc}") from None
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
