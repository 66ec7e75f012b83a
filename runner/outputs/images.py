"""The images/ folder's rules: a downloaded file's extension, and whether it is an image."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image

from runner.outputs.shard_files import member_of, member_sha256
from runner.state.records import FileEntry

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def image_extension(content_type: str, url: str) -> str:
    """The file extension for a downloaded image: from its type, else its URL, else .png."""
    ext = _EXTENSIONS.get(content_type.split(";")[0].strip().lower())
    if ext:
        return ext
    path = url.split("?", 1)[0].lower()
    for candidate in (".png", ".jpg", ".jpeg", ".webp"):
        if path.endswith(candidate):
            return ".jpg" if candidate == ".jpeg" else candidate
    return ".png"


def image_problem(source: Path | bytes) -> str | None:
    """Why the file (or bytes) is not an image we can use, or None (header and checksums; no
    decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(opened) as image:
                image.verify()
    except Image.DecompressionBombError as exc:
        return f"the image claims too many pixels ({exc})"
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's ways of saying "not an image"
        return f"not an image Pillow can open ({exc})"
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(source: Path | bytes) -> tuple[int, int] | None:
    """The image's width and height from its header (nothing is decoded), or None: unreadable,
    or a header that claims more pixels than Pillow opens."""
    if isinstance(source, bytes) and source[:8] == PNG_SIGNATURE and source[12:16] == b"IHDR":
        # A PNG's size is the first 8 bytes of its first chunk: read here, 30 times quicker
        # than opening it with Pillow (once a sample, on the shard thread).
        width, height = struct.unpack(">II", source[16:24])
        pixels_ok = 0 < width * height <= 2 * (Image.MAX_IMAGE_PIXELS or width * height)
        return (width, height) if pixels_ok else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(opened) as image:
                width, height = image.size
                return width, height
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inside(root: Path, relative_path: str) -> Path | None:
    """``root``/``relative_path`` if it stays inside ``root`` (a relative path without ``..``
    and no link pointing away), else None."""
    pure = PurePosixPath(relative_path)
    if not relative_path or pure.is_absolute() or ".." in pure.parts:
        return None
    path = (root / relative_path).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def intact(root: Path, entry: FileEntry) -> bool:
    """Whether a record's file is there, inside the folder, with the sha256 it was saved with
    (a shard's member: in that written shard)."""
    member = member_of(entry.path)
    if member is not None:
        shard = inside(root, member[0])
        return shard is not None and member_sha256(shard, member[1]) == entry.sha256
    path = inside(root, entry.path)
    return path is not None and path.is_file() and file_sha256(path) == entry.sha256
