"""One job's life, from wherever the journal left it to its recorded outcome.

``JobFlow.run`` matches on the job's phase (``runner.state.phase``), which only the fold
changes: a new job is submitted under a slot of the roomiest key and followed in that slot;
a running one is followed with the key that holds it; an ambiguous one has its candidates
collected. Every callee returns a value: a submit says what it sent (``Sent``), whether its
answer left it in doubt (``Doubted``) or how the job ended (an ``Outcome``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import anyio

from runner.api.remote import JobStatus, RemoteJob
from runner.engine.accounts import Account, KeyPool, NoKeyLeft
from runner.engine.budget import Budget
from runner.engine.coordinator import NotLeased
from runner.engine.health import KeyUnwell
from runner.engine.key_care import KeyCare
from runner.engine.options import EngineOptions
from runner.engine.outcome import (
    Ambiguous,
    Cancelled,
    Completed,
    Deferred,
    Doubted,
    Failed,
    NotSubmitted,
    Outcome,
    Sent,
)
from runner.engine.retry import Clock
from runner.engine.stopper import Stopper
from runner.engine.survey import Survey
from runner.errors import FatalApiError
from runner.jobspec import JobSpec
from runner.naming import check_template, render_name
from runner.outputs.provenance import spec_provenance
from runner.outputs.writers import Writer
from runner.settings import RunSettings
from runner.state.events import Done, Retry
from runner.state.journal import Journal
from runner.state.ledger import CANCELLED_ON_EXIT, NO_SINGLE_MATCH, KeyState
from runner.state.phase import Phase
from runner.state.records import FileEntry, ambiguous_record, completed_record, failed_record
from runner.state.run_events import LeftOver, Resumed, Unfinished

log = logging.getLogger("runner.engine.engine")
# A job's own outcome: a line in a log file, but on a terminal only with -v (the live view
# counts them, and `status` groups their reasons).
PER_JOB = {"per_job": True}


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

    @classmethod
    def of(
        cls, settings: RunSettings, options: EngineOptions, started: float, found: Survey
    ) -> FlowPolicy:
        return cls(
            started=started,
            max_attempts=settings.max_attempts,
            cancel_on_exit=options.cancel_on_exit,
            webhooks=options.webhook_url is not None,
            embed_metadata=options.embed_metadata,
            name_stem=check_template(settings.name_template),
            again=frozenset(found.reopened | {spec.key for spec in found.released}),
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
    ) -> None:
        self.pool = pool
        self.journal = journal
        self.writer = writer
        self.clock = clock
        self.budget = budget
        self.policy = policy
        self.stopper = stopper
        self.keys = keys
        self._collected: set[str] = set()  # candidates of ambiguous jobs already fetched

    async def run(self, spec: JobSpec) -> Outcome:
        """Take one job from wherever the journal left it to its outcome."""
        state = self.journal.ledger.state(spec.key)
        if state.phase in (Phase.SUBMITTING, Phase.RUNNING, Phase.AMBIGUOUS):
            self.journal.note(Resumed(spec.key))
        try:
            while True:
                match state.phase:
                    case Phase.AMBIGUOUS:
                        return await self._collect_unmatched(state)
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
        self, spec: JobSpec, state: KeyState, ended: RemoteJob | Outcome, account: Account | None
    ) -> Outcome | None:
        """What a job that left the server means (None: it is retried)."""
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

    async def _send(
        self, spec: JobSpec, state: KeyState
    ) -> tuple[RemoteJob | Outcome, Account | None] | None:
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
                        return await self._follow_with(account, spec, state, sent), account
                    case Doubted():
                        return None
                    case outcome:
                        return outcome, account
        except NoKeyLeft:
            return NotSubmitted(str(self.stopper.fatal or "every API key was refused")), None
        except NotLeased as exc:  # before its POST: a later run sends it
            return NotSubmitted(str(exc)), None

    async def _follow_held(
        self, spec: JobSpec, state: KeyState
    ) -> tuple[RemoteJob | Outcome, Account | None]:
        """Follow a job already at the server with the key that holds it."""
        account = self.pool.owner(state)
        if account is None:
            return self._keyless(state), None
        assert state.job_id is not None
        running = Sent(state.job_id, state.submitted_at, state.answered_at)
        with account.gate.held():
            return await self._follow_with(account, spec, state, running), account

    def _keyless(self, state: KeyState) -> Deferred:
        return Deferred(
            f"it was submitted with key {state.account}, which this run does not have: "
            "run with that key to collect it"
        )

    async def _follow_with(
        self, account: Account, spec: JobSpec, state: KeyState, job: Sent
    ) -> RemoteJob | Outcome:
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

    async def _follow(
        self, account: Account, spec: JobSpec, state: KeyState, job: Sent
    ) -> RemoteJob | Outcome:
        """Poll a job to its end; with --cancel-on-exit, cancel it when the run stops."""
        sent = job.sent
        skew = self.journal.ledger.skew
        polls = account.tracker.wait(
            job.job_id,
            spec.model,
            job.answered,
            created_after=None if sent is None else sent + skew.low,
            # Only this run's submits carry its webhook address (a new secret each run).
            webhook=self.policy.webhooks and (sent or 0) >= self.policy.started,
        )
        if not self.policy.cancel_on_exit:
            return await polls
        with anyio.CancelScope() as scope:
            self.stopper.follows.add(scope)
            try:
                if not self.stopper.stopping:
                    return await polls
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:  # the whole run is aborting
                    await self._cancel_on_exit(account, spec.key, state, job.job_id)
                raise
            finally:
                self.stopper.follows.discard(scope)
                polls.close()  # not awaited when the run was stopping already
        # Stopped (our scope cancelled, or the run was stopping already): cancel the job.
        return await self._cancel_on_exit(account, spec.key, state, job.job_id)

    async def _cancel_on_exit(
        self, account: Account, key: str, state: KeyState, job_id: str
    ) -> Outcome:
        """Cancel a job as the run stops (shielded: it runs while the run is being cancelled)."""
        with anyio.CancelScope(shield=True):
            cancelled = await account.tracker.cancel(job_id)
            if cancelled:
                # Cancelled jobs are not billed: the next run submits this one afresh.
                await self.journal.record(Retry(key, state.attempts, job_id, CANCELLED_ON_EXIT))
        if not cancelled:
            return Deferred(f"could not cancel job {job_id}; the next run polls it")
        return Cancelled(job_id)

    async def _collect_unmatched(self, state: KeyState) -> Outcome:
        """An ambiguous job: keep the images of the candidates, which were paid for.

        Jobs that lost their answers together share candidates: each candidate is fetched by
        the first of them to reach it, and listed in that one's record. The candidates are in
        the listing of the key that sent the lost POST, and are fetched with it.
        """
        account = self.pool.owner(state)
        if account is None:
            return self._keyless(state)
        files: list[FileEntry] = []
        with account.gate.held():
            for job_id in state.candidates:
                if job_id in self._collected:
                    continue
                self._collected.add(job_id)
                try:
                    files += await self._candidate(account, job_id)
                except FatalApiError as exc:
                    self.keys.refused(account, exc)
                    self._collected.discard(job_id)
                    return Deferred(f"key {account.name} was refused: {exc}")
        return Ambiguous(state.candidates, files)

    async def _candidate(self, account: Account, job_id: str) -> list[FileEntry]:
        """A candidate's images, when it completed (kept under images/_unmatched/)."""
        ended = await account.tracker.wait(job_id)
        if not isinstance(ended, RemoteJob) or ended.status != JobStatus.COMPLETED:
            return []
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:100]
        got = await account.tracker.download_all(ended, f"_unmatched/{safe_id}", safe_id)
        return got if isinstance(got, list) else []

    # ---- the outcome, recorded ----------------------------------------------------------------

    async def record(self, spec: JobSpec, outcome: Outcome) -> None:
        """Record a finished job, or count one that will continue in a later run."""
        state = self.journal.ledger.state(spec.key)
        if isinstance(outcome, Completed):
            record = completed_record(
                spec, state, outcome.remote, outcome.files, outcome.noticed_at
            )
        elif isinstance(outcome, Failed):
            record = failed_record(spec, state, outcome.reason)
        elif isinstance(outcome, Ambiguous):
            why = state.doubt or NO_SINGLE_MATCH
            record = ambiguous_record(spec, state, outcome.candidates, outcome.files, why)
        else:
            self._count_unfinished(spec, state, outcome)
            return
        record = self.writer.assign(record)
        await self.journal.record(Done(spec.key, record))
        self.writer.finished(record, again=spec.key in self.policy.again)
        if isinstance(outcome, Completed):
            files = len(outcome.files)
            plural = "" if files == 1 else "s"
            log.debug("← done %s %s (%d file%s)", spec.key, spec.model, files, plural)
        elif isinstance(outcome, Failed):
            log.warning("! failed %s %s: %s", spec.key, spec.model, outcome.reason, extra=PER_JOB)
        else:
            log.warning("? ambiguous %s %s: %s", spec.key, spec.model, record.error, extra=PER_JOB)

    def _count_unfinished(self, spec: JobSpec, state: KeyState, outcome: Outcome) -> None:
        if isinstance(outcome, Deferred):
            why = LeftOver.DEFERRED
            log.warning("… %s left for the next run: %s", spec.key, outcome.reason, extra=PER_JOB)
            if not state.settled and self.pool.several:
                holder = self.pool.opened(state.account)
                if holder is not None:
                    holder.held[outcome.reason] = holder.held.get(outcome.reason, 0) + 1
        elif isinstance(outcome, Cancelled):
            why = LeftOver.CANCELLED
            log.debug("× cancelled %s (job %s) on exit", spec.key, outcome.job_id)
        elif isinstance(outcome, NotSubmitted) and (outcome.over_budget or outcome.unpriced):
            why = LeftOver.OVER_BUDGET if outcome.over_budget else LeftOver.UNPRICED
            log.debug("$ not submitting %s: %s", spec.key, outcome.reason)
        else:
            why = LeftOver.NOT_STARTED
        self.journal.note(Unfinished(spec.key, why))
