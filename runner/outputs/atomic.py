"""Replacing a file so that a reader, or the next run after a crash, sees the old or the new."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str | Iterable[str], *, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (a string, or lines streamed from an iterable).

    ``durable=False`` skips the fsyncs: for files rewritten every few seconds (status.json),
    where a crash may lose the latest copy but never leaves half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.writelines([text] if isinstance(text, str) else text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file stays, and no half-written one beside it
        raise
    if durable:
        fsync_dir(path.parent)
