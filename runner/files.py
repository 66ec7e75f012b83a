"""Opening files a user or another program may have swapped for something else.

A prompts file may be a FIFO (opening it would wait for a writer forever) or ``/dev/zero``
(reading it never ends); a file in the output folder may have been replaced by a symlink to
``/etc/passwd``; a results file may be an 8 GB sparse file with no newline. ``open_regular``
refuses anything but a regular file of bounded size, without blocking and, inside the output
folder, without following a symlink; ``bounded_lines`` reads lines of bounded length.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class UnusableFile(OSError):
    """Not a regular file, too large, or a symlink where none may be."""


def open_regular(
    path: Path, *, max_bytes: int | None = None, follow: bool = True, write: bool = False
) -> BinaryIO:
    """``path`` opened in binary mode (for appending with ``write``) if it is a regular file.

    ``follow=False`` refuses a symlink (O_NOFOLLOW). The open never blocks: a FIFO is seen
    for what it is before anything waits on it. UnusableFile says what is wrong.
    """
    flags = os.O_NONBLOCK | (os.O_WRONLY | os.O_APPEND | os.O_CREAT if write else os.O_RDONLY)
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise UnusableFile(errno.ELOOP, "is a symlink, which is never followed here") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableFile(errno.EINVAL, f"is not a regular file ({_kind(info.st_mode)})")
        if max_bytes is not None and info.st_size > max_bytes:
            raise UnusableFile(
                errno.EFBIG, f"is {info.st_size:,} bytes, above the limit of {max_bytes:,}"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab" if write else "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The whole of a regular file of at most ``max_bytes``."""
    with open_regular(path, max_bytes=max_bytes) as handle:
        # Read what the file holds, not the cap: read(n) sets aside n bytes before reading.
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(min(size, max_bytes) + 1)
    if len(data) > max_bytes:  # it grew since it was checked
        raise UnusableFile(errno.EFBIG, f"is above the limit of {max_bytes:,} bytes")
    return data


def bounded_lines(handle: BinaryIO, limit: int) -> Iterator[tuple[bytes | None, int]]:
    """``(line, length)`` for each line of ``handle`` (with its newline); the line is None when
    longer than ``limit``: such a line is read past in pieces and never held whole."""
    for line in iter(functools.partial(handle.readline, limit + 1), b""):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, len(line)
            continue
        length = len(line)
        while line and not line.endswith(b"\n"):  # the rest of an overlong line
            line = handle.readline(1 << 20)
            length += len(line)
        yield None, length
