"""The server's clock against ours, learnt from submits, and the time windows it gives.

A submit sent at ``sent`` and answered at ``received`` (our clock) whose job the server stamped
``created`` (its clock) proves ``created - received <= skew <= created - sent``. Intersecting
these bounds over many submits narrows them; a lost submit's job, if it exists, was then
created inside ``[sent + low, ended + high]`` on the server's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MARGIN = 5.0  # seconds of clock difference assumed before any submit has measured it
STAMP_PRECISION = 0.002  # the API writes created_at with millisecond precision


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """Bounds on (server clock - our clock), in seconds."""

    low: float = -DEFAULT_MARGIN
    high: float = DEFAULT_MARGIN
    measured: bool = False

    def observe(self, sent: float, received: float, created: float) -> ClockSkew:
        """These bounds narrowed by one answered submit (ignored if it contradicts them)."""
        low, high = created - received, created - sent
        if self.measured:
            low, high = max(low, self.low), min(high, self.high)
        if low > high:
            return self  # a clock jump on either side: keep what we had
        return ClockSkew(low, high, measured=True)

    def window(self, sent: float, ended: float) -> tuple[float, float]:
        """Where, on the server's clock, a job created by a POST in flight then was stamped."""
        return sent + self.low - STAMP_PRECISION, ended + self.high + STAMP_PRECISION
