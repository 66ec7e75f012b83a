"""The most a server may make the client wait for, hold or write."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for API calls and for image downloads."""

    connect: float = 10.0
    api: float = 30.0  # whole request, for JSON calls
    stall: float = 30.0  # a download with less than STALL_BYTES in this long is dropped


@dataclass(frozen=True, slots=True)
class Limits:
    """The most a server's answer may make us hold or write."""

    image_bytes: int = 100_000_000  # one downloaded image (--max-image-bytes)
    answer_bytes: int = 16 << 20  # one JSON answer: a job is a few hundred bytes


STALL_BYTES = 1024  # a download must bring at least this much every Timeouts.stall seconds
