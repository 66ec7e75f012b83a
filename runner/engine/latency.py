"""How long jobs take, learnt while the run goes (``TypicalLatency``), and how jobs are
followed (``TrackSettings``): when a job is first looked at, when a webhook is overdue, and
when a job still queued or running is a straggler, cancelled and sent again."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runner.api.remote import JobStatus, RemoteJob
from runner.engine.retry import RetryPolicy

# A straggler has run longer than this many times the time nine in ten of its model's
# recent jobs took (their p90): a job stuck in a queue, not a slow draw of the model's.
STRAGGLER_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class TrackSettings:
    """How jobs are followed."""

    poll_interval: float = 2.0
    webhook_poll_interval: float = 30.0  # between looks at a job whose webhook is awaited
    listing_gap: float = 0.0  # seconds between listing passes at least
    job_timeout: float = 3 * 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # poll_mode auto: with this many requests a second to spare for polls, a job whose model
    # typically ends within SHORT_JOB intervals is polled on its own instead of listed.
    alone_when_short: float | None = None
    # Stragglers: a job still queued or running past max(straggler_after, STRAGGLER_FACTOR ×
    # its model's p90) is cancelled, read back cancelled, and sent again, at most
    # straggler_resends times per job (0: never). No bound until the model's times are known
    # (or straggler_after is given).
    straggler_after: float | None = None
    straggler_resends: int = 2

    def polls_alone(self, typical: float | None) -> bool:
        """Whether a job that typically takes ``typical`` seconds is best polled on its own:
        its first poll then lands at its end, for about one request, and the listing's
        passes (paced to spare the request rate) would see it later."""
        if self.alone_when_short is None or typical is None:
            return False
        return typical <= SHORT_JOB * self.poll_interval

    def straggler_bound(self, latency: TypicalLatency, model: str) -> float | None:
        """Seconds of a job's life past which it is a straggler (None: none is known yet)."""
        if not self.straggler_resends:
            return None
        p90 = latency.overdue(model)
        if p90 is None:
            return self.straggler_after
        return max(STRAGGLER_FACTOR * p90, self.straggler_after or 0.0)


SHORT_JOB = 4  # poll intervals: a job ending within this many is short (poll_mode auto)


class TypicalLatency:
    """How long each model's jobs take from creation to completion, learnt during the run.

    A job is first polled when the quickest quarter of its model's recent jobs had ended,
    not one interval after it was submitted: a model that takes 30 s is then not polled 15
    times for nothing. The lower quartile rather than the median, because a job's time
    includes any wait in the server's backlog, which the last jobs of a run no longer have.
    """

    SAMPLES = 64  # the recent jobs the quartile is taken over
    MIN_SAMPLES = 5  # before that many, poll at the interval

    def __init__(self) -> None:
        self._seconds: dict[str, deque[float]] = {}

    def observe(self, model: str, remote: RemoteJob) -> None:
        if remote.status != JobStatus.COMPLETED:
            return
        if remote.created_at is None or remote.completed_at is None:
            return
        seconds = remote.completed_at - remote.created_at
        if seconds >= 0:
            self._seconds.setdefault(model, deque(maxlen=self.SAMPLES)).append(seconds)

    def first_poll(self, model: str) -> float | None:
        """Seconds after its creation to first poll a job of ``model`` (None: not known yet)."""
        return self._quantile(model, 0.25)

    def overdue(self, model: str) -> float | None:
        """Seconds after which a job of ``model`` is slower than nine in ten of its peers: a
        webhook not come by then is more likely lost than late (None: not known yet)."""
        return self._quantile(model, 0.9)

    def _quantile(self, model: str, share: float) -> float | None:
        seconds = self._seconds.get(model)
        if seconds is None or len(seconds) < self.MIN_SAMPLES:
            return None
        return sorted(seconds)[int(len(seconds) * share)]
