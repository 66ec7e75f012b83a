"""How counts and durations are said to people: ``1 job``, ``2 jobs``, ``3m25s``.

Every view (the live bars, the progress log line, ``status``, the closing lines of a run)
says them through here, so one figure never reads two ways.
"""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 job``, ``2 jobs``, ``1,200 jobs``; ``plural`` for nouns that do not take an s."""
    word = noun if n == 1 else (plural or noun + "s")
    return f"{n:,} {word}"


def duration(seconds: float | None) -> str:
    """``45s``, ``3m25s``, ``2h05m``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
