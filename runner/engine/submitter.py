"""Submitting: POSTs in parallel, write-ahead journal lines, and never a second payment.

Before each POST the journal records ``submitting`` (fsynced, shared with the other POSTs
going out at the same moment); after it, the remote job id. Up to ``SubmitWindow.level``
POSTs are in flight at once.

A POST that fails before it reaches the server (cannot connect, DNS, connect timeout) or that
the server refuses (4xx, 429) created nothing and is simply sent again or failed. A POST whose
answer is lost after it was sent (timeout, reset, 5xx, garbled 2xx) may have created a paid
job, so it is never just sent again: a barrier stops new POSTs, the ones in flight settle,
and then one round lists the jobs created around every lost POST and matches them
(``runner.engine.matching``). The same round runs at start for the POSTs a crash left pending.

Windows are on the server's clock, learnt from the ``Date`` of every answer (a cheap request
before the run's first POST, then everything that comes back) and from answered submits: a
jump of either clock widens them. A lost POST is sent again only when the listing, read in
whatever order the server gives it, proves its window holds no job of its own.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from runner.api.client import KreaClient
from runner.api.limiter import AdaptiveLimit, SubmitWindow
from runner.api.skew import DATE_PRECISION, ClockSkew
from runner.engine.budget import Budget
from runner.engine.health import Health, KeyUnwell
from runner.engine.matching import (
    Candidate,
    ListingScan,
    LostPost,
    Matching,
    match,
    unknown_clock,
    unproven,
    window_bounds,
)
from runner.engine.outcome import Deferred, Failed, NotSubmitted, Outcome
from runner.engine.retry import Clock, RetryPolicy, retrying
from runner.engine.uploads import Uploads
from runner.errors import (
    AmbiguousSubmit,
    ApiError,
    FatalApiError,
    PermanentApiError,
    TransientApiError,
    WouldPayTwice,
)
from runner.jobspec import JobSpec
from runner.state.events import Ambiguous, Event, Lost, Submitted, Submitting
from runner.state.journal import Journal
from runner.state.ledger import NO_SINGLE_MATCH, KeyState
from runner.state.run_events import LostAnswer, LostChecked, TransientError

log = logging.getLogger(__name__)

LIST_PAGE = 100  # jobs per listing page while matching lost POSTs
# Answers to GET /jobs saying the API has no listing at all: a lost submit cannot be checked,
# now or later.
NO_LISTING = frozenset({403, 404, 405, 501})
NO_LISTING_DOUBT = "the API has no job listing to check a lost submit against"


@dataclass(frozen=True, slots=True)
class SubmitSettings:
    """How submits behave."""

    concurrency: int = 8  # POSTs in flight at most
    # After a lost answer, wait this long before listing: a server (or the one behind a
    # gateway that answered 5xx) may still be creating the job.
    lost_answer_wait: float = 1.0
    api_timeout: float = 30.0  # a POST's whole time; bounds a crashed run's pending windows
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    webhook_url: str | None = None  # where the API should report each job's end


class _Stopping(Exception):
    """The run stops submitting."""


class Submitter:
    """Makes the server hold exactly one job per attempt (module docstring)."""

    def __init__(
        self,
        client: KreaClient,
        journal: Journal,
        clock: Clock,
        settings: SubmitSettings,
        *,
        budget: Budget,
        gate: AdaptiveLimit,
        stopping: Callable[[], bool],
        rng: random.Random | None = None,
        assets: Mapping[str, Path] | None = None,
        health: Health | None = None,
        elsewhere: Callable[[], bool] = lambda: False,
    ) -> None:
        self.client = client
        self.health = health or Health()
        self.elsewhere = elsewhere  # whether another key could take a job this one gives up
        self.account = client.account  # the key's fingerprint, journaled with each POST
        self.journal = journal
        self.clock = clock
        self.settings = settings
        self.budget = budget
        self.gate = gate
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.window = SubmitWindow(settings.concurrency)
        self._slots = anyio.CapacityLimiter(self.window.level)
        self.in_flight = 0
        self._settled = anyio.Event()  # set each time the last POST in flight settles
        self._barrier: anyio.Event | None = None  # up while lost POSTs are being matched
        self._lost: dict[str, LostPost] = {}
        self._outcomes: dict[str, Outcome | None] = {}
        self._round = anyio.Lock()
        self._clock_read = False  # the server's clock was read in this run
        self._reading_since: float | None = None  # a search's listing began then
        self._after = ClockSkew()  # the server's clock as read by answers sent since
        self._clock_lock = anyio.Lock()
        self.refused: FatalApiError | None = None  # the key was refused (401, 402): for good
        self.uploads = Uploads(client, journal, clock, settings.retry, assets or {}, self.rng)
        client.watch_server_clock(clock.time, self._server_time)

    def _server_time(self, sent: float, received: float, server: float) -> None:
        seen = ClockSkew.between(sent, received, server, DATE_PRECISION)
        if seen is None:
            return  # our own clock went back during the request: it says nothing
        ledger = self.journal.ledger
        ledger.skew = ledger.skew.follow(seen)
        self._clock_read = True
        if self._reading_since is not None and sent >= self._reading_since:
            self._after = self._after.hull(seen)

    # ---- one job ------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, state: KeyState) -> Outcome | None:
        """Submit ``spec`` until the server holds one job for it.

        None: the state says what follows (``job_id`` to poll, or ``candidates`` to collect).
        Otherwise the job's outcome. FatalApiError (401, 402) passes through.
        """
        if self.refused is not None:
            raise self.refused
        refusal = self.budget.reserve(spec)
        if refusal is not None:
            priced = self.budget.covers(spec)
            return NotSubmitted(refusal, over_budget=priced, unpriced=not priced)
        body = await self.uploads.body_for(spec)
        if isinstance(body, Failed):
            self.budget.refund(spec)
            return body
        try:
            outcome = await self._submit_reserved(replace(spec, body=body), state)
        except FatalApiError as exc:  # the key was refused (401, 402): another may send the job
            self.refused = self.refused or exc
            if state.settled:
                self.budget.refund(spec)  # nothing was created
            raise
        except KeyUnwell:  # raised only while the job is settled: another key sends it
            self.budget.refund(spec)
            raise
        if isinstance(outcome, Failed | NotSubmitted):
            self.budget.refund(spec)  # nothing was created
        return outcome

    async def _submit_reserved(self, spec: JobSpec, state: KeyState) -> Outcome | None:
        await self._read_server_clock()
        while True:
            try:
                lost = await retrying(
                    lambda: self._attempt(spec, state),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=lambda exc, delay: self._backing_off(spec, exc, delay),
                )
            except _Stopping:
                return NotSubmitted("the run is stopping")
            except WouldPayTwice as exc:  # a bug guard: the POST was not sent
                log.error("%s", exc)
                return Deferred(str(exc))
            except TransientApiError as exc:
                return Failed(f"gave up submitting: {exc}")
            except PermanentApiError as exc:
                return Failed(str(exc))
            if lost is None:
                return None
            outcome = await self._settle(lost)
            if outcome is not None or not state.settled:
                return outcome
            # The lost POST created nothing: send it again (with this key, if it is well).
            self.health.refused(self.clock.monotonic(), "its submits' answers are lost")
            self.hand_over_if_unwell()

    def _saw(self, exc: TransientApiError) -> None:
        self.journal.note(TransientError(exc.status, exc.overload))

    def _backing_off(self, spec: JobSpec, exc: TransientApiError, delay: float) -> None:
        self._saw(exc)
        if exc.overload:
            self.gate.overloaded()  # our own jobs fill the account: the cap, not the key's health
        else:  # a 429 or a request that never reached the server: nothing was created
            self.health.refused(self.clock.monotonic(), str(exc))
        log.debug("↻ submit of %s in %.1fs: %s", spec.key, delay, exc)
        self.hand_over_if_unwell()

    def hand_over_if_unwell(self) -> None:
        """KeyUnwell when this key has been refused past its patience, or is cooling down,
        and another key could take the job (only ever called while the job is settled)."""
        now = self.clock.monotonic()
        health = self.health
        if (health.exhausted(now) or health.cooling(now)) and self.elsewhere():
            raise KeyUnwell(health.reason or "its submits keep being refused")

    async def _attempt(self, spec: JobSpec, state: KeyState) -> LostPost | None:
        """One POST, once no barrier is up and a POST slot is free. Returns it if lost."""
        async with self._post_slot():
            if self.stopping():
                raise _Stopping
            if self.refused is not None:
                raise self.refused
            self.hand_over_if_unwell()
            sent = posted = self.clock.time()
            before = self.journal.ledger.skew

            async def going_out() -> None:
                # As late as the request can be announced: after the rate limiter let it go, so
                # a crash while it waited leaves no pending POST behind.
                nonlocal sent, posted, before
                sent, before = self.clock.time(), self.journal.ledger.skew
                low, high = (before.low, before.high) if before.measured else (None, None)
                await self.journal.record(
                    Submitting(spec.key, state.attempts + 1, sent, low, high, self.account)
                )
                posted = self.clock.time()

            try:
                remote = await self.client.submit(
                    spec.endpoint,
                    spec.body,
                    webhook_url=self.settings.webhook_url,
                    before_send=going_out,
                )
            except AmbiguousSubmit as exc:
                self.journal.note(LostAnswer(spec.key))
                lost = LostPost(spec.key, sent, self.clock.time(), exc.created, before)
                self._raise_barrier(lost)
                log.warning("? submit of %s lost its answer (%s): checking jobs", spec.key, exc)
                return lost
            except ApiError:
                if state.pending_since is not None:  # it went out and was refused
                    await self.journal.record(Lost(spec.key, state.attempts))
                raise
            received = self.clock.time()
            if remote.job_id in self.journal.ledger.known_ids:
                raise PermanentApiError(
                    f"the server answered job {remote.job_id}, which another job of this folder "
                    "already holds (a proxy or cache answering for the API?)"
                )
            answered = Submitted(
                spec.key,
                state.attempts,
                remote.job_id,
                sent,
                received,
                remote.created_at,
                account=self.account,
            )
            if self.in_flight == 1 and self.window.level == 1:
                # No other POST is out, and the next one writes this line to disk ahead of
                # itself: a power cut before then leaves one pending POST whose window holds
                # no other, which the next start adopts by the listing.
                self.journal.record_soon(answered)
            else:
                # Durable before the POST counts as settled: a crash must not turn an answered
                # POST back into a pending one among others, which could be found ambiguous.
                await self.journal.record(answered)
        self.gate.accepted()
        self.health.accepted()
        self.window.clean(received - posted)  # the round trip alone, not our fsync
        self._slots.total_tokens = self.window.level
        log.debug("→ submitted %s as %s", spec.key, remote.job_id)
        return None

    async def _read_server_clock(self) -> None:
        """Before the run's first POST: one cheap request whose ``Date`` shows the server's
        clock, so that even the first lost answer is looked for in the right window."""
        if self._clock_read:
            return
        async with self._clock_lock:
            if self.refused is not None:  # the one before us found the key refused
                raise self.refused
            if self._clock_read:
                return
            problem = "no Date header"

            async def read_clock() -> None:
                try:
                    await self.client.list_jobs(1, None)
                except TransientApiError:
                    if not self._clock_read:  # a 429 or a 5xx still carries a Date
                        raise

            def unread(exc: TransientApiError, delay: float) -> None:
                self._saw(exc)  # nothing was sent yet: another key may send the job
                self.health.refused(self.clock.monotonic(), f"its clock cannot be read: {exc}")
                self.hand_over_if_unwell()

            try:
                await retrying(
                    read_clock,
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=unread,
                    give_up_at=self.clock.monotonic() + 2 * self.settings.api_timeout,
                )
            except (TransientApiError, PermanentApiError) as exc:
                problem = str(exc)  # a refusal still carries a Date, and that is enough
            if not self._clock_read:
                log.warning(
                    "could not read the server's clock (%s): a submit whose answer is lost "
                    "before any other is answered cannot be checked, and ends ambiguous",
                    problem,
                )
            self._clock_read = True

    @contextlib.asynccontextmanager
    async def _post_slot(self) -> AsyncIterator[None]:
        """A POST slot, taken once no barrier is up; counts the POST as in flight."""
        while True:
            while self._barrier is not None:
                self.hand_over_if_unwell()
                await self._barrier.wait()
            await self._slots.acquire()
            if self._barrier is None:
                break
            self._slots.release()  # an answer was lost while we waited: wait for the round
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
            if not self.in_flight:
                self._settled.set()
                self._settled = anyio.Event()

    # ---- the barrier and the matching round ---------------------------------------------------

    def _raise_barrier(self, lost: LostPost) -> None:
        self._lost[lost.key] = lost
        if self._barrier is None:
            self._barrier = anyio.Event()
        self.window.lost()
        self._slots.total_tokens = self.window.level

    async def _settle(self, lost: LostPost) -> Outcome | None:
        """Wait for the POSTs in flight to settle, then learn what ``lost`` created."""
        while self.in_flight:
            await self._settled.wait()
        async with self._round:
            if lost.key not in self._outcomes:
                await self._match_round()
            return self._outcomes.pop(lost.key)

    async def recover(self, states: dict[str, KeyState], run_started: float) -> None:
        """Match the POSTs an earlier run left pending (it crashed before their answers)."""
        for key, state in states.items():
            if state.pending_since is not None and state.done is None:
                ended = min(state.pending_since + self.settings.api_timeout, run_started)
                before = state.pending_skew or self.journal.ledger.skew  # older journals: none
                self._lost[key] = LostPost(key, state.pending_since, ended, before=before)
        if self._lost:
            log.info("checking %d submit(s) an earlier run left unanswered", len(self._lost))
            async with self._round:
                await self._match_round(settle=False)
            self._outcomes.clear()

    async def _match_round(self, *, settle: bool = True) -> None:
        posts, self._lost = list(self._lost.values()), {}
        try:
            if settle:
                await self.clock.sleep(self.settings.lost_answer_wait)
                # A job may be stamped after its POST's answer was lost, up to this moment:
                # no POST of ours has gone out since, so the window can safely reach it.
                now = self.clock.time()
                posts = [p if p.created else replace(p, ended=now) for p in posts]
            try:
                scan = await self._scan_listing(posts)
            except ApiError as exc:
                await self._unchecked(posts, exc)
                return
            after, doubt = self._after, scan.doubt
            if doubt is None and unknown_clock(posts, after):
                doubt = "the server's clock was not read both before and after (no Date header?)"
            elif doubt is None and scan.newest is not None:
                latest = self.clock.time() + after.high + DATE_PRECISION
                if scan.newest > latest:  # its stamps and its Date come from different clocks
                    doubt = "the listing holds jobs stamped after the server's own time"
            jobs = scan.jobs.values()
            found = (
                match(posts, jobs, after) if doubt is None else unproven(posts, jobs, after, doubt)
            )
            await self._record(posts, found)
        finally:
            if self._barrier is not None:
                self._barrier.set()
                self._barrier = None

    async def _unchecked(self, posts: list[LostPost], exc: ApiError) -> None:
        """The listing could not be read. An API without one (404, 405, 501: it never will
        be) leaves the lost submits ambiguous, with that reason, for ``--retry-ambiguous``
        to release; any other failure leaves them pending, for a later look."""
        if isinstance(exc, PermanentApiError) and exc.status in NO_LISTING:
            why = f"{NO_LISTING_DOUBT} ({exc})"
            states = self.journal.ledger.states
            for post in posts:
                log.warning("? %s: %s: not sent again", post.key, why)
                self._outcomes[post.key] = None
            await self.journal.record_many(
                Ambiguous(post.key, states[post.key].attempts, (), why) for post in posts
            )
            return
        self.journal.note(LostChecked(unchecked=len(posts)))
        reason = f"could not check whether a lost submit created a job: {exc}"
        log.warning("? %s (%d submits)", reason, len(posts))
        self.health.unable(reason)  # its other jobs go to keys that can check theirs
        for post in posts:  # the pending line stays: the next run checks again
            self._outcomes[post.key] = Deferred(reason)

    async def _record(self, posts: list[LostPost], found: Matching) -> None:
        by_key = {p.key: p for p in posts}
        states = self.journal.ledger.states
        events: list[Event] = []
        for key, job in found.adopted.items():
            post, state = by_key[key], states[key]
            log.warning("? found %s's job %s: adopted, not sent again", key, job.job_id)
            events.append(
                Submitted(
                    key,
                    state.attempts,
                    job.job_id,
                    post.sent,
                    post.ended,
                    job.created,
                    adopted=True,
                    account=self.account,
                )
            )
            self._outcomes[key] = None
        for key in found.resend:
            log.warning("? %s's lost submit created no job: sending it again", key)
            events.append(Lost(key, states[key].attempts))
            self._outcomes[key] = None
        why = found.doubt or NO_SINGLE_MATCH
        for key, candidates in found.ambiguous.items():
            log.warning(
                "? %s: %s (candidates: %s): not sent again",
                key,
                why,
                ", ".join(candidates) or "none listed",
            )
            events.append(Ambiguous(key, states[key].attempts, tuple(candidates), why))
            self._outcomes[key] = None
        for key in found.unseen:
            reason = "the server accepted a submit whose job the listing does not show yet"
            self._outcomes[key] = Deferred(reason)
        await self.journal.record_many(events)
        self.journal.note(LostChecked(resent=len(found.resend), unchecked=len(found.unseen)))

    def _listing_failed(self, exc: TransientApiError, delay: float) -> None:
        """A page of the listing failed while lost submits wait for it: past the key's
        patience, the jobs waiting behind the barrier (never sent) go to other keys."""
        self._saw(exc)
        self.health.refused(self.clock.monotonic(), f"its listing fails: {exc}")
        if self._barrier is not None and self.health.exhausted(self.clock.monotonic()):
            waiting, self._barrier = self._barrier, anyio.Event()
            waiting.set()  # they look at the key's health, then wait on the new barrier

    async def _scan_listing(self, posts: list[LostPost]) -> ListingScan:
        """Read the listing until it proves what the lost POSTs' windows hold (or cannot)."""
        scan = ListingScan(self.journal.ledger.known_ids)
        cursor: str | None = None
        self._reading_since, self._after = self.clock.time(), ClockSkew()
        try:
            while True:
                page, cursor = await retrying(
                    functools.partial(self.client.list_jobs, LIST_PAGE, cursor),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=self._listing_failed,
                )
                # Bounds taken after each page: its Date may have shown a clock jump.
                start, _ = window_bounds(posts, self._after)
                listed = [Candidate(job.job_id, job.created_at) for job in page]
                if not scan.feed(listed, cursor, start):
                    return scan
        finally:
            self._reading_since = None
