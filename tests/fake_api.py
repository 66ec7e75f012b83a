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

A job completes ``job_seconds`` after it is made (never, by default). ``DELETE`` cancels one
that has not ended, unless the fate queued for it in ``cancel_fates`` says otherwise:

    ok        cancelled (not billed)
    late      the job completes just before the DELETE lands: refused 409, billed
    lost      cancelled, the answer lost (the client sees an error)
    refused   the server keeps the job running: 409
    error     a 502 before the DELETE reaches the job (it keeps running)
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.api.downloads import Download
from runner.api.remote import JobStatus, ListedJob, RemoteJob, parse_time
from runner.api.server_clock import ServerClock
from runner.errors import AmbiguousSubmit, PermanentApiError, TransientApiError
from runner.timefmt import iso_time
from tests.virtual_time import VirtualClock


@dataclass(frozen=True)
class FakeJob:
    job_id: str
    created: float  # server clock
    prompt: str | None  # None: another client's job


class FakeApi:
    """An ``Api`` in front of the submitter (module docstring); it tells ``server_clock``
    the server's time as a Date header would."""

    def __init__(self, clock: VirtualClock, *, rtt: float = 0.1, skew: float = 0.0) -> None:
        self.clock = clock
        self.account = "fake0000"  # the fingerprint a KreaClient derives from its token
        self.rtt = rtt
        self.skew = skew
        self.jobs: list[FakeJob] = []
        self.fates: deque[str] = deque()
        self.log: list[tuple[float, str, str]] = []  # (our time, what, prompt or job id)
        self.in_flight = 0
        self.most_in_flight = 0
        self.lists = 0
        self.dates = True  # answers carry the server's time, as a Date header would
        # How the listing behaves (see ``_snapshot_page``).
        self.order = "newest"  # or "oldest", "shuffled"
        self.odd_cursors = False  # offsets instead of creation times, even newest first
        self.page_size = 1000
        self.loop_after: int | None = None
        self.overlap = False
        self.jumps: list[tuple[float, float]] = []  # (our time, seconds the server's clock moves)
        self.rng = random.Random(0)
        self._snapshots: list[list[FakeJob]] = []
        self.server_clock = ServerClock()
        self.requests_by: Counter[str] = Counter()
        self.job_seconds = float("inf")  # how long a job takes to complete (our clock)
        self.cancelled: set[str] = set()
        self.cancel_fates: deque[str] = deque()
        self._made_at: dict[str, float] = {}  # our clock, when each job was made
        self._ends: dict[str, float] = {}

    def server_now(self) -> float:
        return self.clock.now + self.skew_at(self.clock.now)

    def skew_at(self, moment: float) -> float:
        """The server's clock less ours at ``moment`` (our clock), jumps included."""
        return self.skew + sum(seconds for at, seconds in self.jumps if at <= moment)

    def _dated(self, sent: float) -> None:
        """Report the server's time as a Date header does: whole seconds."""
        if self.dates:
            self.server_clock.dated(
                sent, self.clock.now, float(int(self.server_now() - self.rtt / 2))
            )

    def create(self, prompt: str | None, at: float | None = None) -> FakeJob:
        """A job stamped now (or at ``at``, our clock) on the server's clock."""
        moment = self.clock.now if at is None else at
        stamp = moment + self.skew_at(moment)
        job = FakeJob(str(uuid.uuid4()), round(stamp, 3), prompt)
        self._made_at[job.job_id] = moment
        self.jobs.append(job)
        self.jobs.sort(key=lambda j: j.created)
        return job

    def jobs_for(self, prompt: str) -> list[FakeJob]:
        return [j for j in self.jobs if j.prompt == prompt]

    def billed_for(self, prompt: str) -> list[FakeJob]:
        """The jobs of ``prompt`` billed, or to be billed when they complete: not cancelled."""
        return [j for j in self.jobs_for(prompt) if j.job_id not in self.cancelled]

    def status(self, job_id: str) -> JobStatus:
        if job_id in self.cancelled:
            return JobStatus.CANCELLED
        end = self._ends.get(job_id, self._made_at[job_id] + self.job_seconds)
        return JobStatus.COMPLETED if self.clock.now >= end else JobStatus.PROCESSING

    def _remote(self, job: FakeJob) -> RemoteJob:
        status = self.status(job.job_id)
        urls = ("https://images/x.png",) if status == JobStatus.COMPLETED else ()
        return RemoteJob(job.job_id, status, job.created, None, urls, None)

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        webhook_url: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> RemoteJob:
        fate = self.fates.popleft() if self.fates else "ok"
        prompt = str(body["prompt"])
        if before_send is not None:
            await before_send()
        sent = self.clock.now
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
        if fate not in ("lost", "dropped"):
            self._dated(sent)
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
    ) -> tuple[list[ListedJob], str | None]:
        self.lists += 1
        # A one-job page is the submitter reading the server's clock, not a search.
        self.log.append((self.clock.now, "list" if limit > 1 else "clock", cursor or ""))
        sent = self.clock.now
        await self.clock.sleep(self.rtt)
        self._dated(sent)
        if self.order == "newest" and not self.odd_cursors:
            return self._newest_first(limit, cursor)
        return self._snapshot_page(limit, cursor)

    def _newest_first(self, limit: int, cursor: str | None) -> tuple[list[ListedJob], str | None]:
        """Krea's way: newest first, the cursor a creation time (jobs created before it)."""
        before = parse_time(cursor) if cursor else float("inf")
        assert before is not None
        newest_first = [j for j in reversed(self.jobs) if j.created < before][: limit + 1]
        page = newest_first[:limit]
        more = len(newest_first) > limit
        jobs = [ListedJob(j.job_id, j.created, self.status(j.job_id).value) for j in page]
        return jobs, (iso_time(page[-1].created) if more else None)

    def _snapshot_page(self, limit: int, cursor: str | None) -> tuple[list[ListedJob], str | None]:
        """Any other order, over a snapshot taken at the first page; the cursor an offset.

        ``page_size`` caps pages, after ``loop_after`` pages the cursor goes back to the first,
        ``overlap`` repeats the last job of a page at the top of the next.
        """
        if cursor is None:
            jobs = list(self.jobs)  # by creation
            if self.order == "newest":
                jobs.reverse()
            elif self.order == "shuffled":
                self.rng.shuffle(jobs)
            self._snapshots.append(jobs)
            snapshot, offset = len(self._snapshots) - 1, 0
        else:
            snapshot, offset = (int(part) for part in cursor.split(":"))
        jobs = self._snapshots[snapshot]
        size = min(limit, self.page_size)
        page = jobs[offset : offset + size]
        after = offset + size - (1 if self.overlap and size > 1 else 0)
        if self.loop_after is not None and after >= self.loop_after * size:
            after = 0  # back to the first page: its cursor repeats
        nxt = f"{snapshot}:{after}" if offset + size < len(jobs) else None
        listed = [ListedJob(j.job_id, j.created, self.status(j.job_id).value) for j in page]
        return listed, nxt

    async def get_job(self, job_id: str) -> RemoteJob:
        self.log.append((self.clock.now, "get", job_id))
        await self.clock.sleep(self.rtt)
        job = next((j for j in self.jobs if j.job_id == job_id), None)
        if job is None:
            raise PermanentApiError(f"GET /jobs/{job_id}: 404 Job not found", status=404)
        return self._remote(job)

    async def cancel(self, job_id: str) -> None:
        fate = self.cancel_fates.popleft() if self.cancel_fates else "ok"
        self.log.append((self.clock.now, "cancel:" + fate, job_id))
        await self.clock.sleep(self.rtt / 2)
        if fate == "error":
            await self.clock.sleep(self.rtt / 2)
            raise TransientApiError(f"DELETE /jobs/{job_id}: 502 Bad Gateway", status=502)
        if fate == "late" and not self.status(job_id).terminal:
            self._ends[job_id] = self.clock.now  # it completed as the DELETE travelled
        ended = self.status(job_id).terminal
        if not ended and fate != "refused":
            self.cancelled.add(job_id)
        await self.clock.sleep(self.rtt / 2)
        if fate == "lost":
            raise TransientApiError(f"DELETE /jobs/{job_id}: connection lost")
        if ended or fate == "refused":
            raise PermanentApiError(f"DELETE /jobs/{job_id}: 409 the job has ended", status=409)

    # The rest of the API: a submitter never asks for it.

    async def download(self, url: str, dest: Path) -> Download:
        raise PermanentApiError(f"GET {url}: not in this fake", status=404)

    async def upload_asset(self, path: Path) -> str:
        raise PermanentApiError("POST /assets: not in this fake", status=404)
