"""Local reference images: a file named where a model takes an image URL is uploaded once.

In a manifest, a parameter the model's schema marks as a URI (``image_url``, the ``url`` of
``image_style_references`` and ``style_images``, the items of ``image_urls``) may name a
local file instead. Planning checks the file and puts a stand-in in the body,
``krea-batch-asset:sha256:<hex>``, so a job's key follows the file's content, not its path.
Before the job's POST the file is uploaded with ``POST /assets`` and the stand-in replaced
by the URL Krea gives back; the journal keeps that URL under the file's sha256, so a resume
never uploads the same file again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

STAND_IN = "krea-batch-asset:sha256:"
MAX_ASSET_BYTES = 75 * 1024 * 1024  # Krea's limit for POST /assets
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic"})


class AssetError(ValueError):
    """A local file that cannot be sent: the message says why."""


def _takes_uri(schema: Mapping[str, Any]) -> bool:
    return schema.get("format") == "uri"


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith(("data:", STAND_IN))


def with_local_files(
    value: Any, schema: Mapping[str, Any], base_dir: Path, found: dict[str, Path]
) -> Any:
    """``value`` with each local file at a URI field replaced by its stand-in (recorded in
    ``found``, sha256 → path); raises AssetError for a file that is missing or not an image."""
    if isinstance(value, str):
        if not _takes_uri(schema) or _is_url(value):
            return value
        path = (base_dir / value).resolve()
        digest = _sha256(path, value)
        found[digest] = path
        return STAND_IN + digest
    if isinstance(value, list):
        items = schema.get("items", {})
        return [with_local_files(item, items, base_dir, found) for item in value]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {
            name: with_local_files(item, properties.get(name, {}), base_dir, found)
            for name, item in value.items()
        }
    return value


_DIGESTS: dict[tuple[Path, int, int], str] = {}  # (path, size, mtime) → sha256: hash once


def _sha256(path: Path, written: str) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        message = f"{written!r} is neither a URL nor a readable file ({exc.strerror})"
        raise AssetError(message) from None
    if not path.is_file():
        raise AssetError(f"{written!r} is not a file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise AssetError(
            f"{written!r}: a reference image is a {', '.join(sorted(IMAGE_SUFFIXES))} file"
        )
    if info.st_size > MAX_ASSET_BYTES:
        raise AssetError(f"{written!r} is {info.st_size:,} bytes; Krea takes up to 75 MB")
    key = (path, info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def stand_ins(value: Any) -> set[str]:
    """The sha256 of every stand-in in a request body."""
    if isinstance(value, str):
        return {value.removeprefix(STAND_IN)} if value.startswith(STAND_IN) else set()
    if isinstance(value, list):
        return set().union(*(stand_ins(item) for item in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(stand_ins(item) for item in value.values())) if value else set()
    return set()


def resolved(value: Any, url_of: Callable[[str], str]) -> Any:
    """A request body with each stand-in replaced by its uploaded URL."""
    if isinstance(value, str) and value.startswith(STAND_IN):
        return url_of(value.removeprefix(STAND_IN))
    if isinstance(value, list):
        return [resolved(item, url_of) for item in value]
    if isinstance(value, dict):
        return {name: resolved(item, url_of) for name, item in value.items()}
    return value
