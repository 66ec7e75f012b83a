"""The emulator's accounts: one per accepted token, each with its jobs, limits and figures."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.api.keys import fingerprint
from runner.emulator.config import EmulatorConfig
from runner.emulator.jobs import JobStore

ANY_TOKEN = ""  # the account every token shares when the emulator accepts any


@dataclass
class Account:
    """One account: its jobs (and so its concurrency limit and credits), its request bucket."""

    label: str  # the token's fingerprint, as the runner logs it
    store: JobStore
    stats: Counter[str] = field(default_factory=Counter)
    _tokens: float = 0.0
    _tokens_at: float = 0.0

    def take_rate_token(self, rate: float | None, now: float) -> bool:
        """Whether a request fits the account's rate: a bucket of one second's worth of
        requests, refilled continuously, full at first (a client's first second may burst)."""
        if rate is None:
            return True
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        if self._tokens_at == 0.0:
            self._tokens = rate
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            **dict(sorted(self.stats.items())),
            "jobs_by_status": self.store.counts(),
            "paid": self.store.paid(now),
            "credits_spent": round(self.store.spent(now), 3),
        }


def open_accounts(
    config: EmulatorConfig, clock: Callable[[], float], rng: random.Random
) -> dict[str, Account]:
    """An account per accepted token; with none configured, one that any token reaches."""
    tokens = config.accepted_tokens or (ANY_TOKEN,)
    return {
        token: Account(fingerprint(token) if token else "any", JobStore(config, clock, rng))
        for token in tokens
    }
