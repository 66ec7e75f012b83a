"""The one retry loop, over the pure policies of ``runner.api.backoff``, on an injectable clock."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from runner.api.backoff import NETWORK, OVERLOAD, Backoff
from runner.clock import Clock, SystemClock
from runner.errors import TransientApiError

T = TypeVar("T")
log = logging.getLogger(__name__)
__all__ = ["Clock", "RetryPolicy", "SystemClock", "retrying"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a step retries transient errors.

    429s wait as the server asks (``throttled``) and never count toward giving up: being told
    to slow down is no reason to abandon a job. Other transient errors back off by ``errors``
    and give up after ``max_errors`` in a row (None: never, until the step's deadline).
    """

    errors: Backoff = NETWORK
    throttled: Backoff = OVERLOAD
    max_errors: int | None = 8
    max_retry_after: float = 120.0  # a server asking for longer waits this long (logged)

    def server_wait(self, exc: TransientApiError) -> float | None:
        """The server's Retry-After, clamped to ``max_retry_after``."""
        asked = exc.retry_after
        if asked is None or asked <= self.max_retry_after:
            return asked
        log.warning(
            "the server asked to retry in %s s; waiting %g s instead (--max-retry-after)",
            f"{asked:,.0f}" if asked != float("inf") else "∞",
            self.max_retry_after,
        )
        return self.max_retry_after


OnError = Callable[[TransientApiError, float], None]


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random,
    *,
    on_error: OnError | None = None,
    give_up_at: float | None = None,
) -> T:
    """``await call()`` until it returns; transient errors wait and try again.

    Re-raises the last transient error once ``policy`` gives up or the next wait would end
    after ``give_up_at`` (a ``clock.monotonic()`` time). Other exceptions pass through.
    """
    errors = throttled = 0
    while True:
        try:
            return await call()
        except TransientApiError as exc:
            if exc.status == 429:
                delay = policy.throttled.delay(min(throttled, 3), policy.server_wait(exc), rng)
                throttled += 1
            else:
                errors += 1
                if policy.max_errors is not None and errors > policy.max_errors:
                    raise
                delay = policy.errors.delay(errors - 1, policy.server_wait(exc), rng)
            if exc.retry_after is not None:
                delay = min(delay, policy.max_retry_after)
            if give_up_at is not None and clock.monotonic() + delay > give_up_at:
                raise
            if on_error is not None:
                on_error(exc, delay)
            await clock.sleep(delay)
