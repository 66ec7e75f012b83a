"""The server's clock against ours, read from its answers, and the time windows it gives.

An answer sent at ``sent`` and received at ``received`` (our clock) that carries a server
timestamp ``stamp`` of precision ``p`` (a job's ``created_at`` to the millisecond, a ``Date``
header to the second) proves ``stamp - p - received <= skew <= stamp + p - sent`` *at that
moment*. Either clock may jump later, so bounds from answers far apart in time are never
intersected: ``follow`` keeps the narrower of two bounds that agree and takes the newer when
they do not. A lost submit's window joins the bounds known when it was sent with those read
after its answer was lost (``hull``): a jump of either clock in between widens it, never
narrows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

DEFAULT_MARGIN = 5.0  # seconds of clock difference assumed before anything has measured it
STAMP_PRECISION = 0.002  # the API writes created_at with millisecond precision
# A Date header is whole seconds, truncated or rounded depending on the server: ±1 s.
DATE_PRECISION = 1.0


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """Bounds on (server clock - our clock), in seconds."""

    low: float = -DEFAULT_MARGIN
    high: float = DEFAULT_MARGIN
    measured: bool = False

    @classmethod
    def between(
        cls, sent: float, received: float, stamp: float, precision: float = 0.0
    ) -> ClockSkew | None:
        """What one timestamped answer proves (None: our clock went back during it)."""
        low, high = stamp - precision - received, stamp + precision - sent
        return cls(low, high, measured=True) if low <= high else None

    @property
    def width(self) -> float:
        return self.high - self.low

    def follow(self, seen: ClockSkew | None) -> ClockSkew:
        """The bounds to keep after a new answer: the narrower if both agree, else the new."""
        if seen is None:
            return self
        if not self.measured or seen.high < self.low or seen.low > self.high:
            return seen  # a first reading, or one of the clocks moved: the old bounds are stale
        return seen if seen.width < self.width else self

    def observe(
        self, sent: float, received: float, stamp: float, precision: float = 0.0
    ) -> ClockSkew:
        """``follow`` the bounds one timestamped answer gives."""
        return self.follow(ClockSkew.between(sent, received, stamp, precision))

    def hull(self, other: ClockSkew) -> ClockSkew:
        """Bounds that hold if either of the two held: what survives a jump between them."""
        if not other.measured:
            return self
        if not self.measured:
            return other
        return ClockSkew(min(self.low, other.low), max(self.high, other.high), measured=True)

    def window(self, sent: float, ended: float) -> tuple[float, float]:
        """Where, on the server's clock, a job created by a POST in flight then was stamped."""
        return sent + self.low - STAMP_PRECISION, ended + self.high + STAMP_PRECISION


def http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP ``Date`` header; None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
