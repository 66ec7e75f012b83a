"""Tracking a remote job: polling until it ends, then downloading its images into place."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from runner.api.backoff import jittered
from runner.api.port import Api
from runner.api.remote import JobStatus, RemoteJob
from runner.engine.fetching import Fetcher
from runner.engine.latency import TrackSettings, TypicalLatency
from runner.engine.outcome import Deferred, Failed, Overdue
from runner.engine.retry import Clock, retrying
from runner.engine.watching import Lister, Watch
from runner.engine.withdraw import look, withdraw
from runner.errors import (
    FatalApiError,
    PermanentApiError,
    TransientApiError,
)
from runner.outputs.writers import Writer
from runner.state.run_events import RunEvent

log = logging.getLogger(__name__)


class Hooks(Protocol):
    """The run's webhook deliveries, as trackers ask after them (``Deliveries``)."""

    @property
    def trusted(self) -> bool: ...

    def missed(self, now: float, poll_interval: float) -> None: ...


class Tracker(Fetcher):
    """Polls jobs (the downloads of their results are ``Fetcher``'s)."""

    def __init__(
        self,
        client: Api,
        writer: Writer,
        clock: Clock,
        settings: TrackSettings,
        *,
        note: Callable[[RunEvent], None],
        rng: random.Random | None = None,
        latency: TypicalLatency | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(client, writer, clock, settings, note=note, rng=rng or random.Random())
        self.hooks = hooks  # whether deliveries arrive (None: they are trusted to)
        # Polls of a paid job never give up on errors before the job's own deadline.
        self._poll_retry = replace(settings.retry, max_errors=None)
        self.latency = latency or TypicalLatency()  # a pool's keys share what they learn
        self.watches: dict[str, Watch] = {}  # the jobs being followed, by remote id
        self.listing = False  # whether a Lister looks at them (else each is polled alone)

    def follow_listing(self, on_fatal: Callable[[FatalApiError], None]) -> Lister:
        """The loop that learns how every job stands from the listing (list mode)."""
        self.listing = True
        return Lister(
            self.client,
            self.clock,
            self.watches,
            self.settings.poll_interval,
            min_gap=self.settings.listing_gap,
            rng=self.rng,
            on_refused=self._listing_refused,
            on_error=self._saw,
            on_fatal=lambda exc: self._listing_lost(exc, on_fatal),
        )

    def _listing_lost(self, exc: FatalApiError, on_fatal: Callable[[FatalApiError], None]) -> None:
        """The key was refused mid-run: each job is asked for on its own (and ends deferred
        if the key is refused there too), and the pool hears of it."""
        self.listing = False
        for watch in self.watches.values():
            watch.ask_alone()
        on_fatal(exc)

    def _listing_refused(self, exc: PermanentApiError) -> None:
        log.warning("the job listing is refused (%s): polling each job on its own instead", exc)
        self.listing = False
        for watch in self.watches.values():
            watch.ask_alone()

    def delivered(self, remote: RemoteJob) -> bool:
        """A webhook told that ``remote`` ended: wake its task (False: not a job in flight)."""
        watch = self.watches.get(remote.job_id)
        if watch is None or watch.latest is not None or not remote.status.terminal:
            return False
        watch.delivered = True
        if remote.status == JobStatus.COMPLETED and not remote.urls:
            watch.ask_alone()
            return True
        watch.tell(remote)
        return True

    def retime(self, trusted: bool) -> None:
        """Deliveries were found to arrive (``trusted``: jobs awaiting one are looked at every
        webhook_poll_interval from their next look) or not to (every poll interval, now)."""
        now = self.clock.monotonic()
        settings = self.settings
        for watch in self.watches.values():
            if not watch.webhook:
                continue
            if trusted:
                watch.interval = settings.webhook_poll_interval
                continue
            watch.interval = settings.poll_interval
            watch.due = min(watch.due, now + jittered(watch.interval, rng=self.rng))
            watch.nudge()

    async def wait(
        self,
        job_id: str,
        model: str | None = None,
        exists_since: float | None = None,
        *,
        created_after: float | None = None,
        webhook: bool = False,
        stragglers: bool = False,
        backlogged: bool = False,
    ) -> RemoteJob | Failed | Deferred | Overdue:
        """Follow a job until it ends or its timeout passes.

        The first look waits until jobs of ``model`` typically end (``exists_since``: when
        its POST was answered, our wall clock: the job existed by then). In list mode the
        listing looks at it each tick and it is polled on its own only when the listing
        misses it; in job mode it is polled every interval (jittered), on a schedule that a
        slow answer does not push back. With ``webhook`` its delivery is awaited; once
        deliveries are known to arrive (``hooks``), looks are a safety net: a first look once
        it has run longer than nine in ten jobs of its model (so a lost delivery costs
        seconds, not the net's period), then one every webhook_poll_interval; before that,
        or once they stop, it is looked at as without webhooks. ``created_after``: a lower
        bound of its creation time on the server's clock, where the listing may stop
        looking. With ``stragglers``, a job still queued or running past its model's
        straggler bound is returned ``Overdue`` (one in the account's backlog is not: it
        waits behind our own jobs). ``backlogged``: its submit's answer said it waits in the
        account's backlog (``backlog`` counts them).
        """
        net = webhook and (self.hooks is None or self.hooks.trusted)  # looks are a safety net
        interval = self.settings.webhook_poll_interval if net else self.settings.poll_interval
        now = self.clock.monotonic()
        typical = None
        if model is not None:
            typical = self.latency.overdue(model) if net else self.latency.first_poll(model)
        first = self._first_wait(typical, exists_since)
        wait = jittered(interval, rng=self.rng) if first is None else first
        watch = Watch(
            job_id, interval, due=now + wait, created_after=created_after, webhook=webhook
        )
        if self.listing and not net and model is not None:
            watch.alone = self.settings.polls_alone(self.latency.first_poll(model))
        if backlogged:
            watch.status = JobStatus.BACKLOGGED.value
        age = 0.0 if exists_since is None else max(0.0, self.clock.time() - exists_since)
        self.watches[job_id] = watch
        try:
            return await self._watch(watch, model, now - age, stragglers, webhook)
        finally:
            if self.watches.get(job_id) is watch:
                del self.watches[job_id]
                if watch.status != JobStatus.BACKLOGGED.value:
                    self._next_starts()

    @property
    def backlog(self) -> int:
        """Jobs of this key last known to wait in the account's backlog."""
        waiting = JobStatus.BACKLOGGED.value
        return sum(1 for watch in self.watches.values() if watch.status == waiting)

    def _next_starts(self) -> None:
        """A job of ours left its slot: the oldest of ours in the backlog takes it, as the
        account runs its backlog in order (until a look says otherwise)."""
        for watch in self.watches.values():
            if watch.status == JobStatus.BACKLOGGED.value:
                watch.status = JobStatus.QUEUED.value
                return

    async def _watch(
        self, watch: Watch, model: str | None, born: float, stragglers: bool, webhook: bool
    ) -> RemoteJob | Failed | Deferred | Overdue:
        """``wait``'s loop; ``born``: when the job came to exist (monotonic)."""
        deadline = self.clock.monotonic() + self.settings.job_timeout
        straggling = model if stragglers else None  # the model whose bound applies
        while True:
            now = self.clock.monotonic()
            check = None  # when to read the sightings for a straggler
            if straggling is not None:
                at = self._straggler_look(watch, straggling, born)
                # No bound yet: it is learnt as jobs end. Past it: read each interval.
                check = now + self.settings.poll_interval if at is None or at <= now else at
                if at is not None and webhook and watch.seen_at < at:
                    watch.due = min(watch.due, at)  # the safety net's looks are far apart
            listed = self.listing and not watch.alone
            wake = deadline if listed else min(deadline, watch.due)
            if check is not None:
                wake = min(wake, check)
            await watch.wait(self.clock, wake - now)
            remote = watch.latest
            due = self.clock.monotonic() >= (deadline if listed else watch.due)
            if remote is None and (watch.poll_now or due):
                polled = await self._poll(watch, deadline)
                if not isinstance(polled, RemoteJob):
                    return polled
                remote = polled if polled.status.terminal else None
            if remote is None and straggling is not None:
                overdue = self._overdue(watch, straggling, born)
                if overdue is not None:
                    return overdue
            if remote is not None:
                if model is not None:
                    self.latency.observe(model, remote)
                if webhook and not watch.delivered and self.hooks is not None:
                    self.hooks.missed(self.clock.monotonic(), self.settings.poll_interval)
                return remote
            if self.clock.monotonic() >= deadline:
                back = await self.withdraw(watch.job_id)
                cancelled = back is not None and back.status == JobStatus.CANCELLED
                ending = "cancelled" if cancelled else "could not be cancelled: may be billed"
                return Failed(f"timed out after {self.settings.job_timeout:g} s; {ending}")

    def _straggler_look(self, watch: Watch, model: str, born: float) -> float | None:
        """When the job is a straggler if still queued or running (monotonic): once past its
        bound (None: no bound is known yet)."""
        bound = self.settings.straggler_bound(self.latency, model)
        return None if bound is None else max(born + bound, watch.spared_until)

    def _overdue(self, watch: Watch, model: str, born: float) -> Overdue | None:
        """``Overdue`` when the job was seen queued or running (by the listing or a poll)
        since it passed its straggler bound; one seen in the account's backlog waits behind
        our own jobs, and is looked at again a bound later."""
        at = self._straggler_look(watch, model, born)
        if at is None or watch.status is None or watch.seen_at < at:
            return None
        if watch.status == JobStatus.BACKLOGGED.value:
            bound = self.settings.straggler_bound(self.latency, model) or 0.0
            watch.spared_until = self.clock.monotonic() + max(bound, watch.interval)
            return None
        return Overdue(watch.job_id, watch.status)

    async def _poll(self, watch: Watch, deadline: float) -> RemoteJob | Failed | Deferred:
        """``GET /jobs/{id}`` for one job, retried until its deadline; schedules the next."""
        watch.poll_now = False
        job_id = watch.job_id
        try:
            remote = await retrying(
                functools.partial(self.client.get_job, job_id),
                self._poll_retry,
                self.clock,
                self.rng,
                on_error=self._count_error,
                give_up_at=deadline,
            )
        except TransientApiError as exc:
            # Paid for and perhaps finished: keep it for the next run rather than fail it.
            return Deferred(f"no usable answer about job {job_id} before its timeout: {exc}")
        except PermanentApiError as exc:
            return Failed(f"the remote job {job_id} is gone: {exc}")
        now = self.clock.monotonic()
        if not remote.status.terminal:
            watch.saw(remote.status.value, now)
        later = watch.due + jittered(watch.interval, rng=self.rng)
        watch.due = max(later, now + watch.interval / 2)
        return remote

    def _first_wait(self, typical: float | None, exists_since: float | None) -> float | None:
        """Seconds from now to a first look just after ``typical`` seconds of the job's life."""
        if typical is None:
            return None
        elapsed = 0.0 if exists_since is None else max(0.0, self.clock.time() - exists_since)
        # Just after the typical end, never before: spread (jobs sent together would poll
        # together) but only upwards, so a model of steady latency is seen done at once.
        interval = self.settings.poll_interval
        spread = self.rng.uniform(0.0, min(0.005 * typical, 0.05 * interval))
        return max(interval, typical - elapsed) + spread

    async def look(self, job_id: str) -> RemoteJob | None:
        """The job as it stands now, in one GET (None: it could not be read)."""
        return await look(self.client, job_id)

    async def withdraw(self, job_id: str) -> RemoteJob | None:
        """Cancel a job and read it back (``runner.engine.withdraw``)."""
        return await withdraw(self.client, self.clock, job_id, self.settings.poll_interval)
