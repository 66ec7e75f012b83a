"""An in-memory Krea account for submitter tests, on virtual time.

Its clock runs ``skew`` seconds ahead of ours; a POST takes ``rtt`` and its job is stamped
halfway; each POST meets the fate queued for it (``ok`` otherwise):

    ok        created, answered
    slow      created, answered after three round trips
    lost      created, the answer lost (reset after create)
    garbled   created, answered 2xx with a body that cannot be read
    dropped   not created, the connection lost (reset before the server read it)
    5xx       not created, answered 502
    unsent    never left: cannot connect
    429       refused: too many requests
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.errors import AmbiguousSubmit, TransientApiError
from runner.remote import JobStatus, RemoteJob, parse_time
from runner.timefmt import iso_time
from tests.virtual_time import VirtualClock


@dataclass(frozen=True)
class FakeJob:
    job_id: str
    created: float  # server clock
    prompt: str | None  # None: another client's job


class FakeApi:
    """Stands in for ``KreaClient`` in front of the submitter (module docstring)."""

    def __init__(self, clock: VirtualClock, *, rtt: float = 0.1, skew: float = 0.0) -> None:
        self.clock = clock
        self.rtt = rtt
        self.skew = skew
        self.jobs: list[FakeJob] = []
        self.fates: deque[str] = deque()
        self.log: list[tuple[float, str, str]] = []  # (our time, what, prompt or job id)
        self.in_flight = 0
        self.most_in_flight = 0
        self.lists = 0

    def create(self, prompt: str | None, at: float | None = None) -> FakeJob:
        """A job stamped now (or at ``at``, our clock) on the server's clock."""
        stamp = (self.clock.now if at is None else at) + self.skew
        job = FakeJob(str(uuid.uuid4()), round(stamp, 3), prompt)
        self.jobs.append(job)
        self.jobs.sort(key=lambda j: j.created)
        return job

    def jobs_for(self, prompt: str) -> list[FakeJob]:
        return [j for j in self.jobs if j.prompt == prompt]

    async def submit(
        self, endpoint: str, body: Mapping[str, Any], webhook_url: str | None = None
    ) -> RemoteJob:
        fate = self.fates.popleft() if self.fates else "ok"
        prompt = str(body["prompt"])
        if fate == "unsent":
            raise TransientApiError(f"POST {endpoint}: cannot connect")
        if fate == "429":
            raise TransientApiError("429 Too many requests", status=429, retry_after=1.0)
        self.log.append((self.clock.now, "post", prompt))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.clock.sleep(self.rtt / 2)
            job = self.create(prompt) if fate in ("ok", "slow", "lost", "garbled") else None
            await self.clock.sleep(self.rtt * (2.5 if fate == "slow" else 0.5))
        finally:
            self.in_flight -= 1
        self.log.append((self.clock.now, "answer:" + fate, prompt))
        if fate in ("ok", "slow"):
            assert job is not None
            return RemoteJob(job.job_id, JobStatus.QUEUED, job.created, None, (), None)
        if fate == "garbled":
            raise AmbiguousSubmit("200 with malformed JSON", status=200, created=True)
        if fate == "5xx":
            raise AmbiguousSubmit("502 Bad gateway", status=502)
        raise AmbiguousSubmit("connection lost")

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[RemoteJob], str | None]:
        self.lists += 1
        self.log.append((self.clock.now, "list", cursor or ""))
        await self.clock.sleep(self.rtt)
        before = parse_time(cursor) if cursor else float("inf")
        assert before is not None
        newest_first = [j for j in reversed(self.jobs) if j.created < before][: limit + 1]
        page = newest_first[:limit]
        more = len(newest_first) > limit
        jobs = [RemoteJob(j.job_id, JobStatus.QUEUED, j.created, None, (), None) for j in page]
        return jobs, (iso_time(page[-1].created) if more else None)
