"""Retry delays as pure functions: exponential, capped, jittered, and deferring to Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``base × factor^attempt`` seconds, capped, with ±``jitter`` spread.

    Jitter matters here: many jobs hit the same 429 or outage at once, and without it they
    would all come back in the same instant and be refused together again.
    """

    base: float = 1.0
    factor: float = 3.0
    cap: float = 60.0
    jitter: float = 0.25

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        spread = 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        if retry_after is not None and retry_after >= 0:
            # The server said when; never earlier, and a little later to spread the herd.
            return retry_after * max(1.0, spread)
        return min(self.cap, self.base * self.factor**attempt) * spread


# Transient network errors and 5xx: 1 s, 3 s, 9 s … up to a minute.
NETWORK = Backoff(base=1.0)
# 429 without Retry-After: about 5 s, 15 s, 45 s, as the Krea docs suggest.
OVERLOAD = Backoff(base=5.0, cap=120.0)


def jittered(interval: float, spread: float = 0.1, rng: random.Random | None = None) -> float:
    """``interval`` ± ``spread`` of itself, so periodic polls of many jobs do not align."""
    return interval * (1.0 + (rng or random).uniform(-spread, spread))
