"""Submitting: POSTs in parallel, write-ahead journal lines, and never a second payment.

Before each POST the journal records ``submitting`` (fsynced, shared with the other POSTs
going out at the same moment); after it, the remote job id. Up to ``SubmitWindow.level``
POSTs are in flight at once.

A POST that fails before it reaches the server (cannot connect, DNS, connect timeout) or that
the server refuses (4xx, 429) created nothing and is simply sent again or failed. A POST whose
answer is lost after it was sent (timeout, reset, 5xx, garbled 2xx) may have created a paid
job, so it is never just sent again: ``runner.engine.lost_round`` settles it.

Windows are on the server's clock (``runner.api.server_clock``), learnt from the ``Date`` of
every answer (a cheap request before the run's first POST, then everything that comes back)
and from answered submits: a jump of either clock widens them.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import anyio

from runner.api.limiter import AdaptiveLimit, SubmitWindow
from runner.api.port import Api
from runner.api.remote import JobStatus, RemoteJob
from runner.api.server_clock import ServerClock
from runner.api.webhooks import HookAddress
from runner.engine.budget import Budget
from runner.engine.health import Health, KeyUnwell
from runner.engine.lost_round import LostRounds, Ownership, RoundSettings
from runner.engine.matching import LostPost
from runner.engine.outcome import Deferred, Failed, NotSubmitted, Requeued, Sent, Submission
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
from runner.state.events import Lost, Submitted, Submitting
from runner.state.journal import Journal
from runner.state.ledger import KeyState
from runner.state.run_events import LostAnswer, TransientError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubmitSettings:
    """How submits behave."""

    concurrency: int = 8  # POSTs in flight at most
    # After a lost answer, wait this long before listing: a server (or the one behind a
    # gateway that answered 5xx) may still be creating the job.
    lost_answer_wait: float = 1.0
    api_timeout: float = 30.0  # a POST's whole time; bounds a crashed run's pending windows
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    webhook: HookAddress | None = None  # where the API should report each job's end

    @property
    def rounds(self) -> RoundSettings:
        return RoundSettings(self.lost_answer_wait, self.api_timeout, self.retry)


class _Stopping(Exception):
    """The run stops submitting."""


class _Overfull(Exception):
    """The key's cap came down below the jobs holding its slots: this one waits again."""


class Submitter:
    """Makes the server hold exactly one job per attempt (module docstring)."""

    def __init__(
        self,
        api: Api,
        journal: Journal,
        clock: Clock,
        server_clock: ServerClock,
        settings: SubmitSettings,
        *,
        budget: Budget,
        gate: AdaptiveLimit,
        stopping: Callable[[], bool],
        rng: random.Random,
        uploads: Uploads,
        health: Health,
        elsewhere: Callable[[], bool] = lambda: False,
        owner: Ownership | None = None,
    ) -> None:
        self.api = api
        self.health = health
        self.elsewhere = elsewhere  # whether another key could take a job this one gives up
        self.account = api.account  # the key's fingerprint, journaled with each POST
        self.journal = journal
        self.clock = clock
        self.server_clock = server_clock
        self.settings = settings
        self.budget = budget
        self.gate = gate
        self.stopping = stopping
        self.rng = rng
        self.window = SubmitWindow(settings.concurrency)
        self._slots = anyio.CapacityLimiter(self.window.level)
        self.in_flight = 0
        self._settled = anyio.Event()  # set each time the last POST in flight settles
        self.rounds = LostRounds(
            api, journal, clock, server_clock, settings.rounds, health=health, rng=rng, owner=owner
        )
        self._clock_tried = False  # the server's clock was asked for in this run
        self._clock_lock = anyio.Lock()
        self.refused: FatalApiError | None = None  # the key was refused (401, 402): for good
        self.uploads = uploads

    # ---- one job ------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, state: KeyState) -> Submission:
        """Submit ``spec`` until the server holds one job for it: ``Sent`` (follow it),
        ``Doubted`` (a lost answer left candidates to collect) or the job's outcome.
        FatalApiError (401, 402) passes through."""
        if self.refused is not None:
            raise self.refused
        refusal = await self.budget.reserve(spec)
        if refusal is not None:
            priced = self.budget.covers(spec)
            return NotSubmitted(refusal, over_budget=priced, unpriced=not priced)
        body = await self.uploads.body_for(spec)
        if isinstance(body, Failed):
            await self.budget.refund(spec)
            return body
        try:
            outcome = await self._submit_reserved(replace(spec, body=body), state)
        except FatalApiError as exc:  # the key was refused (401, 402): another may send the job
            self.refused = self.refused or exc
            if state.settled:
                await self.budget.refund(spec)  # nothing was created
            raise
        except KeyUnwell:  # raised only while the job is settled: another key sends it
            await self.budget.refund(spec)
            raise
        if isinstance(outcome, Failed | NotSubmitted | Requeued):
            await self.budget.refund(spec)  # nothing was created
        return outcome

    async def _submit_reserved(self, spec: JobSpec, state: KeyState) -> Submission:
        await self._read_server_clock()
        while True:
            try:
                sent = await retrying(
                    lambda: self._attempt(spec, state),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=lambda exc, delay: self._backing_off(spec, exc, delay),
                )
            except _Stopping:
                return NotSubmitted("the run is stopping")
            except _Overfull:
                return Requeued()
            except WouldPayTwice as exc:  # a bug guard: the POST was not sent
                log.error("%s", exc)
                return Deferred(str(exc))
            except TransientApiError as exc:
                return Failed(f"gave up submitting: {exc}")
            except PermanentApiError as exc:
                return Failed(str(exc))
            if isinstance(sent, Sent):
                return sent
            outcome = await self.rounds.settle(sent, self._quiet)
            if outcome is not None:
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

    async def _attempt(self, spec: JobSpec, state: KeyState) -> LostPost | Sent:
        """One POST, once no barrier is up and a POST slot is free: what it sent, or lost."""
        async with self._post_slot():
            if self.stopping():
                raise _Stopping
            if self.gate.room < 0:  # the backlog's margin is full: no deeper
                raise _Overfull
            if self.refused is not None:
                raise self.refused
            self.hand_over_if_unwell()
            sent = posted = self.clock.time()
            before = self.server_clock.skew

            async def going_out() -> None:
                # As late as the request can be announced: after the rate limiter let it go, so
                # a crash while it waited leaves no pending POST behind.
                nonlocal sent, posted, before
                sent, before = self.clock.time(), self.server_clock.skew
                low, high = (before.low, before.high) if before.measured else (None, None)
                await self.journal.record(
                    Submitting(spec.key, state.attempts + 1, sent, low, high, self.account)
                )
                posted = self.clock.time()

            try:
                remote = await self.api.submit(
                    spec.endpoint,
                    spec.body,
                    webhook_url=hook.for_key(spec.key) if (hook := self.settings.webhook) else None,
                    before_send=going_out,
                )
            except AmbiguousSubmit as exc:
                self.journal.note(LostAnswer(spec.key))
                lost = LostPost(spec.key, sent, self.clock.time(), exc.created, before)
                self.rounds.raise_barrier(lost)
                self.window.lost()
                self._slots.total_tokens = self.window.level
                log.warning("? submit of %s lost its answer (%s): checking jobs", spec.key, exc)
                return lost
            except ApiError:
                if state.pending_since is not None:  # it went out and was refused
                    await self.journal.record(Lost(spec.key, state.attempts))
                raise
            received = self.clock.time()
            await self._answered(spec, state, remote, sent, received)
            self.server_clock.answered(sent, received, remote.created_at)
        self.gate.accepted()
        self.health.accepted()
        self.window.clean(received - posted)  # the round trip alone, not our fsync
        self._slots.total_tokens = self.window.level
        log.debug("→ submitted %s as %s", spec.key, remote.job_id)
        return Sent(remote.job_id, sent, received, remote.status == JobStatus.BACKLOGGED)

    async def _answered(
        self, spec: JobSpec, state: KeyState, remote: RemoteJob, sent: float, received: float
    ) -> None:
        """Journal a POST's answer: the remote job is the key's."""
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

    async def _read_server_clock(self) -> None:
        """Before the run's first POST: one cheap request whose ``Date`` shows the server's
        clock, so that even the first lost answer is looked for in the right window."""
        if self._clock_tried or self.server_clock.dated_once:
            return
        async with self._clock_lock:
            if self.refused is not None:  # the one before us found the key refused
                raise self.refused
            if self._clock_tried or self.server_clock.dated_once:
                return
            problem = "no Date header"

            async def read_clock() -> None:
                try:
                    await self.api.list_jobs(1, None)
                except TransientApiError:
                    if not self.server_clock.dated_once:  # a 429 or a 5xx still carries a Date
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
            if not self.server_clock.dated_once:
                log.warning(
                    "could not read the server's clock (%s): a submit whose answer is lost "
                    "before any other is answered cannot be checked, and ends ambiguous",
                    problem,
                )
            self._clock_tried = True

    @contextlib.asynccontextmanager
    async def _post_slot(self) -> AsyncIterator[None]:
        """A POST slot, taken once no barrier is up; counts the POST as in flight."""
        while True:
            while (barrier := self.rounds.barrier) is not None:
                self.hand_over_if_unwell()
                await barrier.wait()
            await self._slots.acquire()
            if self.rounds.barrier is None:
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

    async def _quiet(self) -> None:
        """Return once no POST of this key is in flight."""
        while self.in_flight:
            await self._settled.wait()

    async def recover(self, states: dict[str, KeyState], run_started: float) -> None:
        """Match the POSTs an earlier run left pending (it crashed before their answers)."""
        await self.rounds.recover(states, run_started)
