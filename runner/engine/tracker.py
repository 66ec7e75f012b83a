"""Tracking a remote job: polling until it ends, then downloading its images into place."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import anyio

from runner.api.backoff import jittered
from runner.api.port import Api
from runner.api.remote import JobStatus, RemoteJob
from runner.engine.latency import TrackSettings, TypicalLatency
from runner.engine.outcome import Deferred, Failed, Overdue
from runner.engine.retry import Clock, retrying
from runner.engine.watching import Lister, Watch
from runner.errors import (
    BadImage,
    DiskError,
    ExpiredUrl,
    FatalApiError,
    PermanentApiError,
    TransientApiError,
)
from runner.outputs import FileEntry
from runner.outputs.writers import Fetched, Writer
from runner.state.run_events import Downloaded, RunEvent, TransientError

log = logging.getLogger(__name__)
READ_BACKS = 3  # reads of a job after a DELETE the server accepted, until it shows an end


class Tracker:
    """Polls jobs and downloads their results."""

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
    ) -> None:
        self.client = client
        self.writer = writer
        self.clock = clock
        self.settings = settings
        self.note = note
        self.rng = rng or random.Random()
        # Polls of a paid job never give up on errors before the job's own deadline.
        self._poll_retry = replace(settings.retry, max_errors=None)
        self.latency = latency or TypicalLatency()  # a pool's keys share what they learn
        self.watches: dict[str, Watch] = {}  # the jobs being followed, by remote id
        self.listing = False  # whether a Lister looks at them (else each is polled alone)

    def _saw(self, exc: TransientApiError) -> None:
        self.note(TransientError(exc.status, exc.overload))

    def _count_error(self, exc: TransientApiError, delay: float) -> None:
        self._saw(exc)

    def _download_error(self, job_id: str, exc: TransientApiError, delay: float) -> None:
        self._saw(exc)
        log.debug("↻ job %s's download again in %.1f s: %s", job_id, delay, exc)

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
        if remote.status == JobStatus.COMPLETED and not remote.urls:
            watch.ask_alone()
            return True
        watch.tell(remote)
        return True

    async def wait(
        self,
        job_id: str,
        model: str | None = None,
        exists_since: float | None = None,
        *,
        created_after: float | None = None,
        webhook: bool = False,
        stragglers: bool = False,
    ) -> RemoteJob | Failed | Deferred | Overdue:
        """Follow a job until it ends or its timeout passes.

        The first look waits until jobs of ``model`` typically end (``exists_since``: when
        its POST was answered, our wall clock: the job existed by then). In list mode the
        listing looks at it each tick and it is polled on its own only when the listing
        misses it; in job mode it is polled every interval (jittered), on a schedule that a
        slow answer does not push back. With ``webhook`` its delivery is awaited, and looks
        are a safety net: a first look once it has run longer than nine in ten jobs of its
        model (so a lost delivery costs seconds, not the net's period), then one every
        webhook_poll_interval. ``created_after``: a lower bound of its creation time on the
        server's clock, where the listing may stop looking. With ``stragglers``, a job still
        queued or running past its model's straggler bound is returned ``Overdue`` (one in
        the account's backlog is not: it waits behind our own jobs).
        """
        interval = self.settings.webhook_poll_interval if webhook else self.settings.poll_interval
        now = self.clock.monotonic()
        typical = None
        if model is not None:
            typical = self.latency.overdue(model) if webhook else self.latency.first_poll(model)
        first = self._first_wait(typical, exists_since)
        wait = jittered(interval, rng=self.rng) if first is None else first
        watch = Watch(job_id, interval, due=now + wait, created_after=created_after)
        if self.listing and not webhook and model is not None:
            watch.alone = self.settings.polls_alone(self.latency.first_poll(model))
        age = 0.0 if exists_since is None else max(0.0, self.clock.time() - exists_since)
        self.watches[job_id] = watch
        try:
            return await self._watch(watch, model, now - age, stragglers)
        finally:
            if self.watches.get(job_id) is watch:
                del self.watches[job_id]

    async def _watch(
        self, watch: Watch, model: str | None, born: float, stragglers: bool
    ) -> RemoteJob | Failed | Deferred | Overdue:
        """``wait``'s loop; ``born``: when the job came to exist (monotonic)."""
        deadline = self.clock.monotonic() + self.settings.job_timeout
        straggling = model if stragglers else None  # the model whose bound applies
        while True:
            now = self.clock.monotonic()
            listed = self.listing and not watch.alone
            wake = deadline if listed else min(deadline, watch.due)
            if straggling is not None:
                wake = min(wake, self._straggler_look(watch, straggling, born))
            await watch.wait(self.clock, wake - now)
            remote = watch.latest
            if remote is None and (watch.poll_now or self.clock.monotonic() >= watch.due):
                polled = await self._poll(watch, deadline)
                if not isinstance(polled, RemoteJob):
                    return polled
                remote = polled if polled.status.terminal else None
            if (
                remote is None
                and straggling is not None
                and self.clock.monotonic() >= self._straggler_look(watch, straggling, born)
            ):
                seen = await self._straggler(watch, straggling, deadline)
                if seen is not None and not isinstance(seen, RemoteJob):
                    return seen  # Overdue, or an answer that ends the following
                remote = seen
            if remote is not None:
                if model is not None:
                    self.latency.observe(model, remote)
                return remote
            if self.clock.monotonic() >= deadline:
                back = await self.withdraw(watch.job_id)
                cancelled = back is not None and back.status == JobStatus.CANCELLED
                ending = "cancelled" if cancelled else "could not be cancelled: may be billed"
                return Failed(f"timed out after {self.settings.job_timeout:g} s; {ending}")

    def _straggler_look(self, watch: Watch, model: str, born: float) -> float:
        """When to look whether the job straggles (monotonic): once past its bound; while no
        bound is known yet, a poll interval from now, to learn it (a wake, no request)."""
        bound = self.settings.straggler_bound(self.latency, model)
        if bound is None:
            return self.clock.monotonic() + self.settings.poll_interval
        return max(born + bound, watch.spared_until)

    async def _straggler(
        self, watch: Watch, model: str, deadline: float
    ) -> RemoteJob | Failed | Deferred | Overdue | None:
        """Read a job past its straggler bound: ended (it is returned), still queued or
        running (``Overdue``), or waiting in the account's backlog (None: looked at again a
        bound later)."""
        polled = await self._poll(watch, deadline)
        if not isinstance(polled, RemoteJob) or polled.status.terminal:
            return polled
        if polled.status == JobStatus.BACKLOGGED:
            bound = self.settings.straggler_bound(self.latency, model) or 0.0
            watch.spared_until = self.clock.monotonic() + max(bound, watch.interval)
            return None
        return Overdue(polled)

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
        later = watch.due + jittered(watch.interval, rng=self.rng)
        watch.due = max(later, now + watch.interval / 2)
        return remote

    async def _fresh_urls(self, remote: RemoteJob, index: int) -> RemoteJob | Deferred:
        """The job fetched again, for result URLs that work (or a reason why not)."""
        try:
            remote = await retrying(
                functools.partial(self.client.get_job, remote.job_id),
                self.settings.retry,
                self.clock,
                self.rng,
                on_error=self._count_error,
            )
        except (TransientApiError, PermanentApiError) as exc:
            return Deferred(f"could not refresh its image URLs: {exc}")
        if len(remote.urls) <= index:
            return Deferred("the job no longer lists its images")
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

    async def cancel(self, job_id: str) -> bool:
        """Ask the server to cancel a job; True when it said yes (not proof: ``withdraw``)."""
        with anyio.CancelScope(shield=True), self.clock.move_on_after(10):
            try:
                await self.client.cancel(job_id)
                return True
            except (TransientApiError, PermanentApiError) as exc:
                log.debug("could not cancel %s: %s", job_id, exc)
        return False

    async def look(self, job_id: str) -> RemoteJob | None:
        """The job as it stands now, in one GET (None: it could not be read)."""
        try:
            return await self.client.get_job(job_id)
        except (TransientApiError, PermanentApiError) as exc:
            log.debug("could not read job %s: %s", job_id, exc)
            return None

    async def withdraw(self, job_id: str) -> RemoteJob | None:
        """Cancel a job and read it back, so that what happened is known, not assumed: the
        job as it stands after the DELETE (``cancelled``, or ended before the DELETE landed,
        or still running if the DELETE did not take), or None when it cannot be read.
        Shielded: a run that is being stopped still learns whether its cancels took."""
        asked = await self.cancel(job_id)
        with anyio.CancelScope(shield=True), self.clock.move_on_after(30):
            for read in range(READ_BACKS):
                remote = await self.look(job_id)
                if remote is not None and (remote.status.terminal or not asked):
                    return remote
                if read + 1 < READ_BACKS:
                    await self.clock.sleep(self.settings.poll_interval)
            return remote
        return None

    async def download_all(
        self,
        remote: RemoteJob,
        stem: str,
        partial_name: str,
        provenance: Mapping[str, Any] | None = None,
    ) -> list[FileEntry] | Deferred | Failed:
        """Every result of ``remote`` into images/STEM(-N).ext, each atomically.

        ``partial_name`` names the hidden file a download is streamed into (unique per job);
        ``provenance`` is written into each image (runner.outputs.provenance) before it is placed.
        """
        if provenance is not None:
            provenance = {**provenance, "job_id": remote.job_id}
            if provenance.get("seed") is None and remote.seed is not None:
                provenance["server_seed"] = remote.seed  # none was sent: the one it chose
        files = []
        limit = self.settings.job_timeout
        deadline = self.clock.monotonic() + limit
        with self.clock.move_on_after(limit):  # tries included: a trickle cannot hold the job
            for index in range(len(remote.urls)):
                suffix = "" if index == 0 else f"-{index}"
                got = await self._download_one(
                    remote, index, stem + suffix, partial_name + suffix, provenance, deadline
                )
                if isinstance(got, Deferred | Failed):
                    return got
                remote, entry = got
                files.append(entry)
            return files
        log.warning("… job %s's images did not arrive within %g s", remote.job_id, limit)
        return Deferred(f"its images did not arrive within the job timeout ({limit:g} s)")

    async def _download_one(
        self,
        remote: RemoteJob,
        index: int,
        stem: str,
        partial_name: str,
        provenance: Mapping[str, Any] | None,
        deadline: float,
    ) -> tuple[RemoteJob, FileEntry] | Deferred | Failed:
        part = self.writer.partial_path(partial_name)
        refreshes = bad_images = 0
        while True:
            url = remote.urls[index]
            try:
                download = await retrying(
                    functools.partial(self.client.download, url, part),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=functools.partial(self._download_error, remote.job_id),
                    give_up_at=deadline,
                )
                fetched = Fetched(
                    download.path,
                    download.sha256,
                    download.bytes,
                    download.content_type,
                    url,
                    download.data,
                )
                try:
                    entry = await anyio.to_thread.run_sync(
                        self.writer.place, fetched, stem, provenance
                    )
                except OSError as exc:  # the disk, not the image: ours to stop for
                    raise DiskError(str(part.parent), exc) from exc
                break
            except BadImage as exc:
                bad_images += 1
                if bad_images > 1:  # fetched again, and again not an image
                    return Failed(str(exc))
                log.debug("↻ job %s's image is unusable: fetching the job again", remote.job_id)
            except ExpiredUrl as exc:
                refreshes += 1
                if refreshes > (self.settings.retry.max_errors or 8):
                    return Deferred(f"its image URLs keep expiring: {exc}")
                log.debug("↻ job %s's image URL expired: fetching the job again", remote.job_id)
            except TransientApiError as exc:
                return Deferred(f"download kept failing: {exc}")
            except PermanentApiError as exc:  # an unusable URL: fetching the job gives it again
                return Deferred(f"cannot download its image: {exc}")
            fresh = await self._fresh_urls(remote, index)
            if isinstance(fresh, Deferred):
                return fresh
            remote = fresh
        self.note(Downloaded(download.bytes))
        return remote, entry


class Deliveries:
    """Where a run's webhook receiver hands each job's end: to whichever key follows it."""

    def __init__(self) -> None:
        self.trackers: list[Tracker] = []

    def deliver(self, remote: RemoteJob) -> bool:
        """Wake the task following ``remote`` (False: not a job in flight)."""
        return any(tracker.delivered(remote) for tracker in self.trackers)
