"""The one way text from outside is read: manifests, prompts files, token files, variables.

Editors and spreadsheets write a byte-order mark and CRLF line ends; a token file filled by
``pass show`` ends in a newline; a "text" file may be a JPEG. Every reader of outside text
goes through here, so each gets the same answer: the BOM is dropped, CRLF and a lone CR end
a line like LF, and what is no text (not UTF-8, a NUL byte, a line or a file too long) is a
TextError naming the file and the line, never a traceback and never a line of a secret.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from runner.errors import UsageError
from runner.files import UnusableFile, bounded_lines, read_regular

BOM = "\ufeff"
MAX_LINE_BYTES = 16 << 20  # one line of a prompts file: a long prompt with its columns
_BREAKS = re.compile(r"\r\n?")


class TextError(UsageError):
    """Bytes that are no text: ``file``, the 1-based ``line`` (None: the whole file) and why."""

    def __init__(self, file: str, line: int | None, reason: str) -> None:
        self.file, self.line, self.reason = file, line, reason
        super().__init__(f"{file}:{line}: {reason}" if line is not None else f"{file}: {reason}")

    @property
    def detail(self) -> str:
        """The reason with its line, for a caller that names the file itself."""
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason


def decode(data: bytes, file: str, *, first_line: int = 1) -> str:
    """``data`` as text whose lines end in ``\\n``, without a leading BOM; a TextError (with
    the line, counted from ``first_line``) for bytes that are not UTF-8 or a NUL byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + _breaks(data[: exc.start].decode("utf-8"))
        bad = data[exc.start : exc.start + 1].hex()
        raise TextError(file, line, f"not UTF-8 text (byte 0x{bad})") from None
    return clean(text, file, first_line=first_line, decoded=True)


def clean(text: str, file: str, *, first_line: int = 1, decoded: bool = False) -> str:
    """Text already decoded (an environment variable, a chunk of a file): the BOM dropped,
    line ends made ``\\n``; a NUL, or bytes Python kept undecoded (``surrogateescape``),
    are a TextError."""
    if first_line == 1:
        text = text.removeprefix(BOM)  # a mark at the start of a file, not of each line
    nul = text.find("\0")
    if nul >= 0:
        line = first_line + _breaks(text[:nul])
        raise TextError(file, line, "a NUL byte, which text never holds (a binary file?)")
    try:
        if not decoded:  # what UTF-8 bytes decode to always encodes again
            text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = first_line + _breaks(text[: exc.start])
        raise TextError(file, line, "not UTF-8 text") from None
    return _BREAKS.sub("\n", text) if "\r" in text else text


def _breaks(text: str) -> int:
    """How many lines end in ``text`` (``\\n``, ``\\r\\n`` or a lone ``\\r``)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def read_text(path: Path, max_bytes: int) -> str:
    """The text of the regular file ``path`` of at most ``max_bytes``: OSError (UnusableFile
    among them) when it cannot be read, TextError when it is no text."""
    return decode(read_regular(path, max_bytes), str(path))


def read_piped_text(path: str, max_bytes: int) -> str:
    """The text of ``path``, which may also be a pipe (``<(pass show krea)``): opened without
    blocking, so a FIFO nobody writes to reads as empty instead of waiting forever, and read
    no further than ``max_bytes`` (UnusableFile beyond)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnusableFile(errno.EFBIG, f"holds more than {max_bytes:,} bytes")
    return decode(data, path)


def text_lines(
    handle: BinaryIO, file: str, *, max_line: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str]]:
    """``(number, line)`` for each line of ``handle``, read as it goes (a file of a gigabyte is
    never held whole); each line ends in ``\\n`` (the last one may not), a lone ``\\r`` ends
    one too, and the first loses its BOM. A TextError names the first line that is no text."""
    number = 1
    for chunk, length in bounded_lines(handle, max_line):
        if chunk is None:
            raise TextError(file, number, f"a line of {length:,} bytes, above {max_line:,}")
        text = decode(chunk, file, first_line=number)
        if "\n" not in text[:-1]:  # the usual case: one line
            yield number, text
            number += 1
            continue
        *ended, rest = text.split("\n")  # a lone CR ended lines inside it
        for piece in ended:
            yield number, piece + "\n"
            number += 1
        if rest:
            yield number, rest
            number += 1


def env_text(environ: Mapping[str, str], name: str) -> str | None:
    """The value of the variable ``name``, its surrounding whitespace and BOM dropped
    (``$(cat file)`` keeps both); None when unset or blank."""
    value = environ.get(name)
    if value is None:
        return None
    try:
        text = clean(value.strip(), f"${name}").strip()
    except TextError as exc:  # a variable has no lines to speak of
        raise TextError(exc.file, None, exc.reason) from None
    return text or None
