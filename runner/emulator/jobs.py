"""The emulator's jobs: lifecycle as a function of the clock, account concurrency, credits.

No background task moves a job along: its status is computed from the clock whenever it is
asked for, so a test with a fake clock sees exactly the statuses it steps through.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runner.catalog import Model
from runner.emulator.config import EmulatorConfig
from runner.emulator.statuses import TERMINAL, JobStatus
from runner.jobspec import canonical_json
from runner.timefmt import iso_time

# Share of a job's run time at which each running status begins.
_PHASES = (
    (0.0, JobStatus.QUEUED),
    (0.1, JobStatus.SCHEDULED),
    (0.2, JobStatus.PROCESSING),
    (0.4, JobStatus.SAMPLING),
    (0.8, JobStatus.INTERMEDIATE_COMPLETE),
)
FAILURE_REASONS = (
    "Content moderation flagged the prompt",
    "The model provider returned an error",
    "Generation timed out",
)


def iso(timestamp: float) -> str:
    """A clock reading as the API writes times: ISO 8601, milliseconds, UTC."""
    return iso_time(timestamp) or ""


def parse_iso(text: str) -> float:
    """A cursor's time; ValueError when it is not ISO 8601 (a naive time is UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


@dataclass(slots=True)
class EmulatedJob:
    """One job the emulator accepted."""

    id: str
    model: Model
    body: dict[str, Any]
    created: float
    duration: float
    units: float
    fails: bool
    failure_reason: str
    webhook_url: str | None = None
    origin: str = ""  # scheme://host the job was submitted to: its image URLs start with it
    start: float | None = None  # None while backlogged
    cancelled: float | None = None
    stuck: float = 0.0  # seconds it stays queued once started, before it runs (--stuck-for)

    @property
    def end(self) -> float | None:
        if self.cancelled is not None:
            return self.cancelled
        return None if self.start is None else self.start + self.stuck + self.duration

    def status(self, now: float) -> JobStatus:
        if self.cancelled is not None and now >= self.cancelled:
            return JobStatus.CANCELLED
        if self.start is None or now < self.start:
            return JobStatus.BACKLOGGED
        if now < self.start + self.stuck:
            return JobStatus.QUEUED  # holds its slot and does not move: a stuck job
        running = now - self.start - self.stuck
        elapsed = running / self.duration if self.duration > 0 else 1.0
        if elapsed >= 1.0:
            return JobStatus.FAILED if self.fails else JobStatus.COMPLETED
        return next(status for share, status in reversed(_PHASES) if elapsed >= share)

    def paid(self, now: float) -> bool:
        """Billed: it completed (failed and cancelled jobs are not billed)."""
        return self.status(now) == JobStatus.COMPLETED

    def billable(self, now: float) -> bool:
        """Billed, or billed once it ends unless it is cancelled first (or fails)."""
        return self.status(now) not in (JobStatus.FAILED, JobStatus.CANCELLED)


class Refused(Exception):
    """The account cannot take another job now; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class JobStore:
    """All jobs of the emulated account, newest last."""

    config: EmulatorConfig
    clock: Callable[[], float]
    rng: random.Random
    jobs: dict[str, EmulatedJob] = field(default_factory=dict)
    awaiting_webhook: dict[str, EmulatedJob] = field(default_factory=dict)
    _backlog: list[str] = field(default_factory=list)
    _running: list[tuple[float, str]] = field(default_factory=list)  # heap of (end, job id)
    # The listing's index: creation times, never decreasing, and the jobs in the same order.
    _created: list[float] = field(default_factory=list)
    _by_creation: list[EmulatedJob] = field(default_factory=list)
    _made: Counter[str] = field(default_factory=Counter)  # jobs made per request body

    def now(self) -> float:
        return self.clock()

    def create(self, model: Model, body: dict[str, Any], webhook_url: str | None) -> EmulatedJob:
        """Accept a job, or raise Refused (429 at the concurrency limit, 402 out of credits)."""
        now = self.now()
        self.advance(now)
        units = model.estimate_units(body) or 1.0
        if self.config.credits is not None and self.committed(now) + units > self.config.credits:
            raise Refused(402, "You have run out of credits.")
        limit = self.config.concurrency_limit
        full = limit is not None and len(self._running) >= limit
        if full and self.config.overflow == "429":
            raise Refused(429, "You have reached the maximum number of concurrent jobs.")
        duration = self.config.latency.sample(self.rng, model.average_seconds)
        job = EmulatedJob(
            id=str(uuid.uuid4()),  # random even under a fixed seed: ids must not repeat on restart
            model=model,
            body=body,
            created=now,
            duration=duration * self.config.time_scale,
            units=units,
            fails=self.rng.random() < self.config.failure_rate,
            failure_reason=self.rng.choice(FAILURE_REASONS),
            webhook_url=webhook_url,
        )
        if self.config.stuck_rate and self._stuck_draw(body) < self.config.stuck_rate:
            job.stuck = self.config.stuck_for
        self.jobs[job.id] = job
        if self._created and now < self._created[-1]:
            job.created = now = self._created[-1]  # a clock stepped back: keep the index sorted
        self._created.append(now)
        self._by_creation.append(job)
        if webhook_url:
            self.awaiting_webhook[job.id] = job
        if full:
            self._backlog.append(job.id)
        else:
            self._start(job, now)
        return job

    def _stuck_draw(self, body: dict[str, Any]) -> float:
        """Whether a job gets stuck is drawn from its request body and how many jobs that
        body had before (and the seed), not from the shared random stream: the same jobs
        get stuck whatever order they come in, and a body sent again draws afresh."""
        made = body_hash(body)
        self._made[made] += 1
        return random.Random(f"{self.config.seed}:{made}:{self._made[made]}").random()

    def _start(self, job: EmulatedJob, at: float) -> None:
        job.start = at
        heapq.heappush(self._running, (at + job.stuck + job.duration, job.id))

    def advance(self, now: float) -> None:
        """Let jobs that ended by ``now`` free their slots for backlogged ones, in order."""
        while self._running and self._running[0][0] <= now:
            ended_at, _ = heapq.heappop(self._running)
            self._start_next(ended_at)

    def _start_next(self, at: float) -> None:
        """A slot came free at ``at``: the oldest backlogged job takes it."""
        while self._backlog:
            job = self.jobs[self._backlog.pop(0)]
            if job.cancelled is None:
                self._start(job, max(at, job.created))
                return

    def get(self, job_id: str) -> EmulatedJob | None:
        self.advance(self.now())
        return self.jobs.get(job_id)

    def cancel(self, job: EmulatedJob) -> bool:
        """Cancel a job that has not ended (backlogged, queued or running); False when it
        has ended already (a cancel that lost its race with the job's end)."""
        now = self.now()
        self.advance(now)
        if job.status(now) in TERMINAL:
            return False
        job.cancelled = now
        if job.start is None:
            self._backlog.remove(job.id)
        else:
            self._running = [(end, jid) for end, jid in self._running if jid != job.id]
            heapq.heapify(self._running)
            self._start_next(now)  # its slot is free at once
        return True

    def spent(self, now: float) -> float:
        """Compute units billed so far: jobs that completed (Krea bills on completion)."""
        return sum(j.units for j in self.jobs.values() if j.paid(now))

    def committed(self, now: float) -> float:
        """Compute units billed or to be billed when the jobs still running complete: what a
        new job must fit beside (a 402 refuses it), so a balance is never overdrawn."""
        return sum(j.units for j in self.jobs.values() if j.billable(now))

    def paid(self, now: float) -> int:
        """Jobs billed so far (completed)."""
        return sum(1 for j in self.jobs.values() if j.paid(now))

    def newest_first(self, before: float | None, status: JobStatus | None) -> Iterator[EmulatedJob]:
        """Jobs created before ``before`` (all: None), newest first; found by bisection, so a
        page costs the same however many jobs the account holds."""
        now = self.now()
        self.advance(now)
        end = len(self._created) if before is None else bisect.bisect_left(self._created, before)
        for index in range(end - 1, -1, -1):
            job = self._by_creation[index]
            if status is None or job.status(now) == status:
                yield job

    def counts(self) -> dict[str, int]:
        now = self.now()
        self.advance(now)
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            key = job.status(now).value
            counts[key] = counts.get(key, 0) + 1
        return counts
