"""A key's health: whether its submits go through, and when it may be tried again.

Only answers that prove nothing was created count against a key: a 429 that is not about our
own jobs at once, a connection that never reached the server, a lost answer the listing
proved created nothing, a listing that cannot be read (its lost submits cannot be checked).
A key refused this way for ``patience`` seconds in a row hands the jobs it has not created
to the other keys and cools down: it takes no new job for ``cooldown`` seconds (doubled each
time in a row, up to ``MAX_COOLDOWN``), then is tried again. A submit that goes through makes
it well. A key with no other to hand over to keeps trying, as a pool of one always did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_COOLDOWN = 600.0


class KeyUnwell(Exception):
    """The key's submits keep being refused: the job, never created with it, goes to
    another key."""


@dataclass(eq=False, slots=True)
class Health:
    """One key's health (module docstring); times are the engine clock's monotonic ones."""

    patience: float = 20.0
    cooldown: float = 30.0
    failing_since: float | None = None  # refused since then, with nothing accepted
    reason: str | None = None  # the last refusal
    cool_until: float = -math.inf  # no new job before then
    cools: int = 0  # cooldowns in a row

    def accepted(self) -> None:
        self.failing_since, self.reason, self.cools = None, None, 0

    def refused(self, now: float, reason: str) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.reason = reason

    def unable(self, reason: str) -> None:
        """It cannot check its lost submits: unwell at once."""
        self.failing_since, self.reason = -math.inf, reason

    def exhausted(self, now: float) -> bool:
        """Refused for longer than its patience."""
        return self.failing_since is not None and now - self.failing_since >= self.patience

    def cooling(self, now: float) -> bool:
        return now < self.cool_until

    def cool(self, now: float) -> float:
        """Take no new job for a while; returns how many seconds."""
        seconds = min(MAX_COOLDOWN, self.cooldown * 2.0**self.cools)
        self.cools += 1
        self.cool_until = now + seconds
        return seconds
