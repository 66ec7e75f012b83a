"""How counts and durations are said to people (``1 job``, ``2 jobs``, ``3m25s``), and
phrases laid out at a terminal's width without cutting one in two.

Every view (the live bars, the progress log line, ``status``, the closing lines of a run)
says them through here, so one figure never reads two ways.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 job``, ``2 jobs``, ``1,200 jobs``; ``plural`` for nouns that do not take an s."""
    word = noun if n == 1 else (plural or noun + "s")
    return f"{n:,} {word}"


def them(n: int) -> str:
    """The pronoun for ``n`` jobs: ``it`` for one, ``them`` for more."""
    return "it" if n == 1 else "them"


def duration(seconds: float | None) -> str:
    """``45s``, ``3m25s``, ``2h05m``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def pack(phrases: Sequence[str], width: int, joiner: str = " · ") -> list[str]:
    """Phrases laid out in lines of at most ``width`` columns, broken only between phrases
    (``8 in flight`` is never split in two), a phrase wider than a line at its spaces."""
    lines: list[str] = []
    line = ""
    for phrase in phrases:
        joined = f"{line}{joiner}{phrase}" if line else phrase
        if len(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        pieces = textwrap.wrap(phrase, max(1, width), break_on_hyphens=False) or [phrase]
        lines += pieces[:-1]
        line = pieces[-1]
    if line:
        lines.append(line)
    return lines


_BREAKS = re.compile(r"(?<=[,;] )|(?<=\S   )")  # after ", " and "; ", and wide gaps


def wrap_phrases(text: str, width: int) -> str:
    """A message for a terminal ``width`` wide: each line broken after its commas and
    semicolons (or a wide gap) where it must, a phrase wider than a line at its spaces."""
    return "\n".join(
        wrapped.rstrip()
        for line in text.splitlines()
        for wrapped in pack(_BREAKS.split(line), width, "")
    )
