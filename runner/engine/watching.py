"""Learning how jobs in flight stand: one listing for all of them, webhooks, per-job polls.

Each job being followed has a ``Watch``. The job's own task sleeps on it; whatever learns
something about the job (a page of ``GET /jobs``, a webhook delivery) writes it there and
wakes the task. ``Lister`` is the loop that pages the listing when jobs are due: from the newest job
back to the oldest job in flight, so a few requests cover every job however many there are.
A job older than the pages a pass may read is polled on its own from then on (a few
stragglers cost a request each, less than paging back to them); one the listing keeps
missing although the pages reach it is asked for on its own too, so nothing is stranded.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import anyio
import anyio.lowlevel

from runner.api.backoff import jittered
from runner.api.port import Api
from runner.api.remote import TERMINAL, JobStatus, ListedJob, MalformedJob, RemoteJob
from runner.engine.retry import Clock
from runner.errors import FatalApiError, PermanentApiError, TransientApiError

log = logging.getLogger(__name__)

UNSEEN_TICKS = 3  # passes a due job may be missing from the listing before it is polled alone
PAGE_MIN, PAGE_MAX = 100, 1000  # items per page of GET /jobs (the API allows 1 to 1000)
PAGES_PER_INTERVAL = 8  # the listing's request budget: pages read per poll interval at most
ENDS_PER_PAGE = 2  # and a page read per this many jobs ending, so 0.5 list requests a job
CREATED_SLACK = 30.0  # seconds: a page older than the oldest job in flight by this ends a pass
# Statuses that say the listing will never show the job differently: it answers for the job.
_TERMINAL_TEXT = frozenset(status.value for status in TERMINAL)
# Answers to GET /jobs meaning this API (or a proxy in front of it) has no listing.
NO_LISTING = frozenset({400, 403, 404, 405, 422, 501})


@dataclass(eq=False, slots=True)
class Watch:
    """One job being followed: what is known of it, and the task waiting for news."""

    job_id: str
    interval: float  # seconds between looks at it (the poll interval; longer with webhooks)
    due: float  # monotonic time it should next be looked at
    created_after: float | None = None  # a lower bound of its creation time (server clock)
    latest: RemoteJob | None = None  # its last known state, when that is terminal
    missed: int = 0  # listing passes in a row it was due and not seen
    poll_now: bool = False  # ask for it on its own at once
    alone: bool = False  # past the listing's reach: polled on its own from now on
    spared_until: float = 0.0  # not a straggler before then (monotonic): it was backlogged
    status: str | None = None  # its status when last seen not ended (None: not seen yet)
    seen_at: float = -math.inf  # when it was last seen so (monotonic)
    webhook: bool = False  # its end's delivery is awaited
    delivered: bool = False  # and it came
    _news: anyio.Event = field(default_factory=anyio.Event)

    def tell(self, remote: RemoteJob) -> None:
        """The job has ended (a listing or a webhook says so): wake its task."""
        self.latest = remote
        self._news.set()

    def nudge(self) -> None:
        """Its schedule changed: wake its task to wait anew."""
        self._news.set()

    def saw(self, status: str, at: float) -> None:
        """The job was seen not ended, with ``status``, at ``at`` (monotonic)."""
        self.status, self.seen_at = status, at

    def ask_alone(self) -> None:
        self.poll_now = True
        self._news.set()

    async def wait(self, clock: Clock, seconds: float) -> None:
        """Sleep until there is news or ``seconds`` pass."""
        if not self._news.is_set() and seconds > 0:
            with clock.move_on_after(seconds):
                await self._news.wait()
        else:
            await anyio.lowlevel.checkpoint()
        self._news = anyio.Event()


@dataclass(slots=True)
class ListingStats:
    """What the listing has done in this run, for the summary and the logs."""

    passes: int = 0
    pages: int = 0
    seen_ended: int = 0  # jobs whose end was learnt from the listing
    alone: int = 0  # jobs handed to a poll of their own after being missed
    beyond_reach: int = 0  # jobs older than the pages a pass reads: polled on their own
    errors: int = 0

    @classmethod
    def total(cls, each: Sequence[ListingStats]) -> ListingStats | None:
        """The figures of several keys' listings together (None: none listed)."""
        if not each:
            return None
        return cls(*(sum(getattr(s, f.name) for s in each) for f in fields(cls)))


class Lister:
    """Pages ``GET /jobs`` when jobs are due and tells each watched job what it says of it."""

    def __init__(
        self,
        client: Api,
        clock: Clock,
        watches: dict[str, Watch],
        interval: float,
        *,
        min_gap: float = 0.0,
        rng: random.Random,
        on_refused: Callable[[PermanentApiError], None],
        on_error: Callable[[TransientApiError], None],
        on_fatal: Callable[[FatalApiError], None] | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.watches = watches
        self.interval = interval
        self.min_gap = min_gap  # seconds between passes at least
        self.rng = rng
        self.on_refused = on_refused
        self.on_error = on_error
        self.on_fatal = on_fatal
        self.stats = ListingStats()

    async def run(self) -> None:
        """A pass whenever a job is due for a look, within a budget; returns if the listing
        is refused.

        Passes follow the jobs' own schedules (the first look when a model's jobs typically
        end, then every interval), so an ending job is seen soon after it ends, not up to a
        whole interval later; a pass covers every job due by then, so more jobs add no
        passes. The budget, whichever is longest between passes: ``min_gap``; at most
        PAGES_PER_INTERVAL pages an interval; a page per ENDS_PER_PAGE jobs ending (at the
        rate passes have been finding them), up to one interval.
        """
        next_pass = -math.inf
        previous = self.clock.monotonic()
        end_rate = 0.0  # jobs found ended per second, a moving average
        while True:
            now = self.clock.monotonic()
            listed = [w.due for w in self.watches.values() if not w.alone]
            # Wake by an interval from now at the latest: a job added meanwhile is due no
            # sooner than one interval after it was.
            earliest = min(listed, default=now + self.interval)
            wake = max(next_pass, min(earliest, now + self.interval))
            await self.clock.sleep(max(0.0, wake - now))
            now = self.clock.monotonic()
            due = [w for w in self.watches.values() if w.due <= now and not w.alone]
            if not due:
                continue
            pages, ends = self.stats.pages, self.stats.seen_ended
            try:
                await self.sweep(due)
            except FatalApiError as exc:  # the key is refused: the listing ends here
                if self.on_fatal is None:
                    raise
                self.on_fatal(exc)
                return
            except PermanentApiError as exc:
                if exc.status in NO_LISTING:
                    self.on_refused(exc)
                    return
                self._missed(due, {w.job_id for w in due})
                self.on_error(TransientApiError(str(exc), status=exc.status))
            except TransientApiError as exc:
                self.stats.errors += 1
                self._missed(due, {w.job_id for w in due})
                self.on_error(exc)
            spent = max(1, self.stats.pages - pages)
            found = self.stats.seen_ended - ends
            rate = found / max(now - previous, 1e-3)
            end_rate = rate if end_rate == 0 else 0.8 * end_rate + 0.2 * rate
            previous = now
            worth = spent * ENDS_PER_PAGE / end_rate if end_rate > 0 else self.interval
            gap = max(self.min_gap, spent * self.interval / PAGES_PER_INTERVAL)
            next_pass = now + max(gap, min(worth, self.interval))

    async def sweep(self, due: list[Watch]) -> None:
        """One pass: pages from the newest job back until every due job was seen, the pages
        reach past the oldest of them, or a pass has read enough pages. Due jobs created
        before the last page read are then past its reach, and left to their own polls."""
        started = self.clock.monotonic()
        unseen = {w.job_id for w in due}
        bounds = [w.created_after for w in due if w.created_after is not None]
        oldest = min(bounds) if len(bounds) == len(due) else None
        page = min(PAGE_MAX, max(PAGE_MIN, 2 * len(self.watches)))
        max_pages = max(2, math.ceil(4 * len(self.watches) / page))
        cursor: str | None = None
        reach: float | None = None  # creation time of the oldest job read, while more remain
        cursors: set[str] = set()
        self.stats.passes += 1
        for _ in range(max_pages):
            jobs, cursor = await self.client.list_jobs(limit=page, cursor=cursor)
            self.stats.pages += 1
            self._read(jobs, unseen, started)
            if not unseen or cursor is None or not jobs:
                reach = None
                break
            if cursor in cursors:  # the listing loops
                reach = math.inf  # every job it did not show is polled on its own
                break
            cursors.add(cursor)
            reach = jobs[-1].created_at
            if oldest is not None and reach is not None and reach < oldest - CREATED_SLACK:
                reach = None
                break
        if reach is not None:
            unseen = self._past_reach(due, unseen, reach)
        self._missed(due, unseen)

    def _past_reach(self, due: list[Watch], unseen: set[str], reach: float) -> set[str]:
        """Hand the unseen jobs that may be older than ``reach`` to polls of their own; the
        ones left were created within the pages read, so their absence is a miss."""
        left = set(unseen)
        for watch in due:
            if watch.job_id in unseen and (watch.created_after or 0.0) < reach:
                left.discard(watch.job_id)
                self.stats.beyond_reach += 1
                watch.alone = True
                watch.ask_alone()
        return left

    def _read(self, jobs: list[ListedJob], unseen: set[str], started: float) -> None:
        for job in jobs:
            watch = self.watches.get(job.job_id)
            if watch is None:
                continue
            unseen.discard(job.job_id)
            watch.missed = 0
            if job.status not in _TERMINAL_TEXT:
                watch.saw(job.status, started)
                if watch.due <= started:
                    watch.due = started + jittered(watch.interval, rng=self.rng)
                continue
            try:
                remote = RemoteJob.from_json(job.data)
            except MalformedJob:
                watch.ask_alone()  # its own answer says what is wrong, and fails it cleanly
                continue
            if remote.status == JobStatus.COMPLETED and not remote.urls:
                watch.ask_alone()  # a listing may leave results out: the job's own page has them
                continue
            self.stats.seen_ended += 1
            watch.tell(remote)

    def _missed(self, due: list[Watch], unseen: set[str]) -> None:
        now = self.clock.monotonic()
        for watch in due:
            if watch.job_id not in unseen or self.watches.get(watch.job_id) is not watch:
                continue
            watch.due = now + jittered(watch.interval, rng=self.rng)  # look again a tick later
            watch.missed += 1
            if watch.missed >= UNSEEN_TICKS:
                self.stats.alone += 1
                watch.ask_alone()
