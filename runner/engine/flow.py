"""One job's life, from wherever the journal left it to its recorded outcome.

``JobFlow.run`` matches on the job's phase (``runner.state.phase``), which only the fold
changes: a new job is submitted under a slot of the roomiest key and followed in that slot;
a running one is followed with the key that holds it; an ambiguous one has its candidates
collected. Every callee returns a value: a submit says what it sent (``Sent``), whether its
answer left it in doubt (``Doubted``) or how the job ended (an ``Outcome``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from runner.api.remote import JobStatus, RemoteJob
from runner.engine.accounts import Account, KeyPool, NoKeyLeft
from runner.engine.budget import Budget
from runner.engine.candidates import Candidates, keyless
from runner.engine.coordinator import NotLeased
from runner.engine.deliveries import Deliveries
from runner.engine.health import KeyUnwell
from runner.engine.key_care import KeyCare
from runner.engine.options import EngineOptions
from runner.engine.outcome import (
    Cancelled,
    Completed,
    Deferred,
    Doubted,
    Failed,
    NotSubmitted,
    Outcome,
    Overdue,
    Requeued,
    Sent,
)
from runner.engine.recall import Recalls
from runner.engine.retry import Clock
from runner.engine.stopper import Stopper
from runner.engine.survey import Survey
from runner.errors import FatalApiError
from runner.jobspec import JobSpec
from runner.naming import check_template, render_name
from runner.outputs.provenance import spec_provenance
from runner.outputs.writers import Writer
from runner.settings import RunSettings
from runner.state.events import ON_EXIT, STOPPED, STRAGGLER, Retry
from runner.state.journal import Journal
from runner.state.ledger import KeyState
from runner.state.phase import Phase
from runner.state.run_events import Resumed

log = logging.getLogger("runner.engine.engine")
# A job waiting in the account's backlog (behind its concurrency): a stop cancels it,
# unbilled, rather than wait for it to run and bill (the next run sends it).
WAITING = frozenset({JobStatus.BACKLOGGED})
Ended = RemoteJob | Outcome | Overdue  # what following a job comes to


@dataclass(frozen=True)
class FlowPolicy:
    """How jobs are run, beyond what each part knows."""

    started: float  # the run's start, wall clock: submits after it carry its webhook
    max_attempts: int = 3
    cancel_on_exit: bool = False
    webhooks: bool = False  # this run's submits ask for a webhook
    embed_metadata: bool = True
    name_stem: str = "{key}"
    again: frozenset[str] = frozenset()  # finished before, run again in this run
    straggler_resends: int = 2  # a job's stragglers cancelled and sent again, at most

    @classmethod
    def of(
        cls, settings: RunSettings, options: EngineOptions, started: float, found: Survey
    ) -> FlowPolicy:
        return cls(
            started=started,
            max_attempts=settings.max_attempts,
            cancel_on_exit=options.cancel_on_exit,
            webhooks=options.webhook is not None,
            embed_metadata=options.embed_metadata,
            name_stem=check_template(settings.name_template),
            again=frozenset(found.reopened | {spec.key for spec in found.released}),
            straggler_resends=settings.straggler_resends,
        )


class JobFlow:
    """Runs one job at a time per caller; many callers share it (module docstring)."""

    def __init__(
        self,
        pool: KeyPool,
        journal: Journal,
        writer: Writer,
        clock: Clock,
        budget: Budget,
        policy: FlowPolicy,
        *,
        stopper: Stopper,
        keys: KeyCare,
        recalls: Recalls,
        deliveries: Deliveries | None = None,
    ) -> None:
        self.pool = pool
        self.journal = journal
        self.writer = writer
        self.clock = clock
        self.budget = budget
        self.policy = policy
        self.stopper = stopper
        self.keys = keys
        self.recalls = recalls
        self.candidates = Candidates(
            pool, journal, keys, deliveries or Deliveries(), clock, webhooks=policy.webhooks
        )
        self._spared: set[str] = set()  # stragglers whose cancel did not take: followed on

    async def run(self, spec: JobSpec) -> Outcome:
        """Take one job from wherever the journal left it to its outcome."""
        state = self.journal.ledger.state(spec.key)
        if state.phase in (Phase.SUBMITTING, Phase.RUNNING, Phase.AMBIGUOUS):
            self.journal.note(Resumed(spec.key))
        try:
            while True:
                match state.phase:
                    case Phase.AMBIGUOUS:
                        collected = await self.candidates.collect(spec, state)
                        if collected is not None:
                            return collected
                        continue  # a delivery told which job is its own, or that none is
                    case Phase.SUBMITTING:
                        return Deferred(
                            "a lost submit could not be checked yet; the next run checks it"
                        )
                    case Phase.NEW if self.stopper.stopping:
                        return NotSubmitted("the run is stopping")
                    case Phase.NEW:
                        ended = await self._send(spec, state)
                    case Phase.RUNNING:
                        ended = await self._follow_held(spec, state)
                    case _:  # finished: nothing to do (never handed out so)
                        return Deferred("the job is finished already")
                if ended is None:
                    continue  # sent to no key yet, or ambiguous: look again
                outcome = await self._ended(spec, state, *ended)
                if outcome is not None:
                    return outcome
        except FatalApiError as exc:
            self.keys.stop_for_refusals(exc)
            return NotSubmitted(str(exc))

    async def _ended(
        self, spec: JobSpec, state: KeyState, ended: Ended, account: Account | None
    ) -> Outcome | None:
        """What a job that left the server means (None: it is retried)."""
        if isinstance(ended, Overdue):
            assert account is not None
            return await self._straggler(spec, state, ended, account)
        if not isinstance(ended, RemoteJob):
            return ended
        assert account is not None
        if ended.status == JobStatus.COMPLETED:
            return await self._fetch(account, spec, ended)
        reason = ended.error or f"the job was {ended.status.value}"
        if state.submitted_at is not None and state.submitted_at >= self.policy.started:
            await self.budget.refund(spec)  # failed and cancelled jobs are not billed
        if ended.status == JobStatus.FAILED and state.accepted < self.policy.max_attempts:
            await self.journal.record(Retry(spec.key, state.attempts, ended.job_id, reason))
            log.debug("↻ retry %s after remote failure: %s", spec.key, reason)
            return None
        return Failed(reason)

    async def _straggler(
        self, spec: JobSpec, state: KeyState, late: Overdue, account: Account
    ) -> Outcome | None:
        """A job far past its model's usual time: cancelled, read back, and sent again only
        once it reads back cancelled (None: the loop sends it, or follows it on). One that
        ended in the race is kept as it ended; one whose cancel did not take is followed to
        its end."""
        log.info(
            "⧗ %s's job %s is still %s far past its model's usual time: cancelling it",
            spec.key,
            late.job_id,
            late.status,
        )
        back = await self.recalls.recall(account, spec, state, late.job_id, STRAGGLER)
        if back is None or not back.status.terminal:
            self._spared.add(late.job_id)
            return None
        if back.status == JobStatus.CANCELLED:  # journaled: the key is new, sent once more
            if state.straggled >= self.policy.straggler_resends:
                log.info(
                    "⧗ %s is sent again a last time (--straggler-resends %d): its next job is "
                    "waited for however long it takes",
                    spec.key,
                    self.policy.straggler_resends,
                )
            return None
        return await self._ended(spec, state, back, account)

    async def _send(self, spec: JobSpec, state: KeyState) -> tuple[Ended, Account | None] | None:
        """Submit a new job with the roomiest key and follow it in the same slot. None:
        nothing is settled yet (its key was refused before it was sent, or it is in doubt)."""
        try:
            async with self.pool.slot() as account:
                try:
                    sent = await account.submits.submit(spec, state)
                except FatalApiError as exc:  # nothing was created: another key may send it
                    self.keys.refused(account, exc)
                    return None if self.pool.any_live else (NotSubmitted(str(exc)), account)
                except KeyUnwell as exc:  # nothing was created: another key sends it
                    self.keys.unwell(account, str(exc))
                    return None
                match sent:
                    case Sent():
                        tracker = account.tracker
                        # Keep only a margin waiting in the backlog (an answer without a
                        # status says nothing: the looks at our jobs then tell).
                        if sent.backlogged or tracker.backlog:
                            account.gate.backlogged(len(tracker.watches) - tracker.backlog)
                        return await self._follow_with(account, spec, state, sent), account
                    case Doubted() | Requeued():
                        return None  # in doubt (its candidates next), or not sent: room first
                    case outcome:
                        return outcome, account
        except NoKeyLeft:
            return NotSubmitted(str(self.stopper.fatal or "every API key was refused")), None
        except NotLeased as exc:  # before its POST: a later run sends it
            return NotSubmitted(str(exc)), None

    async def _follow_held(self, spec: JobSpec, state: KeyState) -> tuple[Ended, Account | None]:
        """Follow a job already at the server with the key that holds it."""
        account = self.pool.owner(state)
        if account is None:
            return self._keyless(state), None
        assert state.job_id is not None
        running = Sent(state.job_id, state.submitted_at, state.answered_at)
        with account.gate.held():
            return await self._follow_with(account, spec, state, running), account

    def _keyless(self, state: KeyState) -> Deferred:
        return keyless(state)

    async def _follow_with(
        self, account: Account, spec: JobSpec, state: KeyState, job: Sent
    ) -> Ended:
        try:
            return await self._follow(account, spec, state, job)
        except FatalApiError as exc:
            self.keys.refused(account, exc)
            return Deferred(
                f"key {account.name} was refused while following job {job.job_id}: {exc}"
            )

    async def _fetch(self, account: Account, spec: JobSpec, ended: RemoteJob) -> Outcome:
        """Download a completed job's images (its server slot already free)."""
        if not ended.urls:
            return Failed("the job completed without any result URL")
        noticed = self.clock.time()
        stem = render_name(self.policy.name_stem, spec)
        provenance = spec_provenance(spec) if self.policy.embed_metadata else None
        try:
            files = await account.tracker.download_all(ended, stem, spec.key, provenance)
        except FatalApiError as exc:  # refreshing its URLs was refused
            self.keys.refused(account, exc)
            return Deferred(f"key {account.name} was refused while fetching its images: {exc}")
        return Completed(ended, files, noticed) if isinstance(files, list) else files

    async def _follow(self, account: Account, spec: JobSpec, state: KeyState, job: Sent) -> Ended:
        """Poll a job to its end. When the run stops, a job that has not begun to run is
        cancelled (unbilled: the next run sends it), and with --cancel-on-exit any job."""
        sent = job.sent
        skew = self.journal.ledger.skew
        follow = functools.partial(
            account.tracker.wait,
            job.job_id,
            spec.model,
            job.answered,
            created_after=None if sent is None else sent + skew.low,
            # Only this run's submits are sure to carry the address it takes webhooks at.
            webhook=self.policy.webhooks and (sent or 0) >= self.policy.started,
        )
        polls = follow(
            stragglers=state.straggled < self.policy.straggler_resends
            and job.job_id not in self._spared,
            backlogged=job.backlogged,
        )
        with anyio.CancelScope() as scope:
            self.stopper.follows.add(scope)
            try:
                if not self.stopper.stopping:
                    return await polls
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called and self.policy.cancel_on_exit:  # aborting
                    await self._cancel_on_exit(account, spec, state, job.job_id)
                raise
            finally:
                self.stopper.follows.discard(scope)
                polls.close()  # not awaited when the run was stopping already
        # Stopped (our scope cancelled, or the run was stopping already).
        if self.policy.cancel_on_exit:
            return await self._cancel_on_exit(account, spec, state, job.job_id)
        return await self._stop_waiting(account, spec, state, job, follow)

    async def _stop_waiting(
        self,
        account: Account,
        spec: JobSpec,
        state: KeyState,
        job: Sent,
        follow: Callable[[], Awaitable[Ended]],
    ) -> Ended:
        """The run stops: a job still waiting in the backlog is cancelled, so that it is not
        billed for a run that has stopped; one that runs is followed to its end (the
        drain), as is one whose cancel did not take."""
        with anyio.CancelScope(shield=True):
            now = await account.tracker.look(job.job_id)
            if now is None or now.status not in WAITING:
                back = now
            else:
                back = await self.recalls.recall(account, spec, state, job.job_id, STOPPED)
        if back is not None and back.status == JobStatus.CANCELLED:
            return Cancelled(job.job_id)
        if back is not None and back.status.terminal:
            return back
        return await follow()

    async def _cancel_on_exit(
        self, account: Account, spec: JobSpec, state: KeyState, job_id: str
    ) -> Outcome:
        """Cancel a job as the run stops (shielded: it runs while the run is being cancelled)."""
        with anyio.CancelScope(shield=True):
            back = await self.recalls.recall(account, spec, state, job_id, ON_EXIT)
        if back is None or back.status != JobStatus.CANCELLED:
            return Deferred(f"could not cancel job {job_id}; the next run polls it")
        return Cancelled(job_id)  # not billed: the next run submits this one afresh
