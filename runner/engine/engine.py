"""The engine: every job of a manifest from submit to recorded outcome, resumably.

One task group owns everything: a producer feeding specs into a bounded stream, workers that
each drive one job at a time, and the helpers (signals, deadline, progress). A worker hands
its job to the ``Submitter`` (POSTs in parallel, never paid twice) and the ``Tracker`` (polls,
downloads), then records the outcome. The gate admits ``concurrency`` jobs to the server at
once; there are twice as many workers, so a job downloading its images (its server slot
already free) never keeps the next one from being submitted. Stopping is two-phase: stop
submitting and let jobs in flight finish (drain), then cancel what is left (abort).
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from runner.api.client import KreaClient
from runner.api.keys import ApiKey
from runner.api.limiter import AdaptiveLimit
from runner.api.remote import JobStatus, RemoteJob
from runner.engine.accounts import Account, KeyPool, KeyRing, NoKeyLeft
from runner.engine.ambiguity import is_ambiguous, risk_of, worst_cost
from runner.engine.budget import Budget, cannot_price
from runner.engine.health import Health, KeyUnwell
from runner.engine.options import EngineOptions
from runner.engine.outcome import (
    Ambiguous,
    Cancelled,
    Completed,
    Deferred,
    Failed,
    NotSubmitted,
    Outcome,
)
from runner.engine.retry import Clock, SystemClock
from runner.engine.stopping import Stopping
from runner.engine.submitter import SubmitSettings, Submitter
from runner.engine.tracker import Tracker, TrackSettings, TypicalLatency
from runner.engine.watching import ListingStats
from runner.engine.writing import Writing
from runner.errors import DiskError, FatalApiError
from runner.jobspec import JobSpec, in_shard
from runner.manifest import Manifest, expand
from runner.naming import (
    BUCKET_SIZE,
    DEFAULT_TEMPLATE,
    add_name,
    check_names,
    check_template,
    crowded_folders,
    render_name,
)
from runner.outputs import FileEntry, OutputFolder
from runner.outputs.events import Done, Released, Retry
from runner.outputs.figures import Counts, RunResult, RunStats, stats_of
from runner.outputs.journal import Journal
from runner.outputs.ledger import CANCELLED_ON_EXIT, NO_SINGLE_MATCH, KeyState, RunLedger
from runner.outputs.provenance import spec_provenance
from runner.outputs.records import (
    RecordStatus,
    ambiguous_record,
    completed_record,
    failed_record,
)
from runner.outputs.run_events import (
    KeyCooling,
    KeyInUse,
    KeyRetired,
    LeftOver,
    Planned,
    Resumed,
    RunEvent,
    Unfinished,
)
from runner.outputs.writers import Writer, open_writer
from runner.settings import RunSettings
from runner.wording import counted

log = logging.getLogger(__name__)
# A job's own outcome: a line in a log file, but on a terminal only with -v (the live view
# counts them, and `status` groups their reasons).
PER_JOB = {"per_job": True}


class Engine(Stopping, Writing):
    """Runs one manifest into one output folder (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        folder: OutputFolder,
        clients: KreaClient | Sequence[KreaClient] | KeyRing,
        options: EngineOptions,
        *,
        clock: Clock | None = None,
        on_progress: Callable[[Engine], None] | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.manifest = manifest
        self.settings: RunSettings = manifest.settings
        self.folder = folder
        self.writer = writer or open_writer(folder, self.settings.format, self.settings.shard_size)
        retry = replace(options.retry, max_retry_after=self.settings.max_retry_after)
        self.options = options = replace(options, retry=retry)
        self.clock: Clock = clock or SystemClock()
        self.on_progress = on_progress
        self.budget = Budget(options.budget, options.budget_unit)
        self.rng = random.Random()
        self.stopping: str | None = None
        self.interrupted = False
        self.fatal: FatalApiError | None = None
        self.advice: str | None = None  # what would help, when the run stops for a cause
        self._refusals: set[int | None] = set()  # the statuses keys were refused with
        self.disk_error: DiskError | None = None
        self.started = self.clock.time()
        self.keys: list[str] = []  # every job's key, in manifest order
        self._resumed: list[JobSpec] = []
        self._released: list[JobSpec] = []  # ambiguous jobs to send again (--retry-ambiguous)
        self._journal: Journal | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._follow_scopes: set[anyio.CancelScope] = set()
        self._collected: set[str] = set()  # candidates of ambiguous jobs already fetched
        self._again: set[str] = set()  # finished in an earlier run, run again in this one
        self._name_stem = check_template(self.settings.name_template)
        self._tracking = TrackSettings(
            poll_interval=self.settings.poll_interval,
            webhook_poll_interval=self.settings.webhook_poll_interval,
            # Listing passes take a tenth of the request rate at most.
            listing_gap=10 / self.settings.rate_limit,
            job_timeout=self.settings.job_timeout,
            retry=self.options.retry,
            alone_when_short=self._alone_when_short(),
        )
        self._latency = TypicalLatency()  # the keys' jobs run the same models: learnt once
        if isinstance(clients, KreaClient):
            clients = [clients]
        self.ring = clients if isinstance(clients, KeyRing) else KeyRing.of(clients)
        self._submitting: SubmitSettings | None = None  # set when the run starts
        self._helpers: TaskGroup | None = None  # where each account's listing loop runs
        self.pool = KeyPool(
            self.ring.keys,
            self._open_account,
            ceiling=self.settings.concurrency,
            now=self.clock.monotonic,
        )

    def _open_account(self, key: ApiKey) -> Account:
        """A key's account, made when the key first gets a job (or holds one)."""
        if self._submitting is None or self._helpers is None:
            raise RuntimeError("the run has not started")
        client = self.ring.client(key)
        gate = AdaptiveLimit(self.settings.concurrency)
        tracker = Tracker(
            client,
            self.writer,
            self.clock,
            self._tracking,
            note=self._note,
            rng=self.rng,
            latency=self._latency,
        )
        health = Health(self.options.key_patience, self.options.key_cooldown)
        account = Account(client, gate, tracker, key=key, health=health)
        account.submitter = Submitter(
            client,
            self.journal,
            self.clock,
            self._submitting,
            budget=self.budget,
            gate=gate,
            stopping=lambda: self.stopping is not None,
            rng=self.rng,
            assets=self.manifest.assets,
            health=health,
            elsewhere=lambda: self.pool.ready_besides(account),
        )
        if self.settings.poll_mode in ("list", "auto"):
            account.lister = tracker.follow_listing(lambda exc: self._refused(account, exc))
            self._helpers.start_soon(account.lister.run)
        if self.pool.several:
            self.journal.note(KeyInUse(account.name, key.place))
        return account

    def _alone_when_short(self) -> float | None:
        """poll_mode auto: the request rate per-job polls may take (None: the listing alone).
        Polling every job in flight each interval must fit in half the rate with room to
        spare, the other half left to submits and downloads' refreshes."""
        settings = self.settings
        if settings.poll_mode != "auto":
            return None
        polls = settings.concurrency / settings.poll_interval
        return polls if 4 * polls <= settings.rate_limit else None

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("the engine is not running")
        return self._journal

    @property
    def ledger(self) -> RunLedger:
        return self.journal.ledger

    @property
    def counts(self) -> Counts:
        """This run's figures, as the ledger folded them (zero before the run starts)."""
        return self._journal.ledger.counts if self._journal is not None else Counts()

    def _note(self, event: RunEvent) -> None:
        if self._journal is not None:
            self._journal.note(event)

    @property
    def states(self) -> dict[str, KeyState]:
        return self.journal.ledger.states

    def specs(self) -> Iterator[JobSpec]:
        specs: Iterator[JobSpec] = iter(expand(self.manifest))
        if self.options.shard is not None:
            shard = self.options.shard
            specs = (spec for spec in specs if in_shard(spec.key, shard))
        return itertools.islice(specs, self.options.limit)

    def stats(self) -> RunStats:
        """The run's figures now, for the views."""
        return stats_of(
            self.counts,
            self.started,
            self.clock.time(),
            in_flight=self.pool.in_use,
            posting=sum(a.submitter.in_flight for a in self.pool.accounts if a.submitter),
            requests=sum((a.client.requests_by for a in self.pool.accounts), Counter()),
            running=self.pool.running(),
        )

    def listing_stats(self) -> ListingStats | None:
        """What the listing did, over every key (None: the run did not list)."""
        listers = [a.lister.stats for a in self.pool.accounts if a.lister is not None]
        if not listers:
            return None
        return ListingStats(
            *(sum(getattr(s, f.name) for s in listers) for f in fields(ListingStats))
        )

    def delivered(self, remote: RemoteJob) -> bool:
        """A webhook told that ``remote`` ended: wake its task (False: not a job in flight)."""
        return any(account.tracker.delivered(remote) for account in self.pool.accounts)

    # ---- the run ----------------------------------------------------------------------------

    async def run(self) -> RunResult:
        journal = self._journal = Journal.open(self.folder.journal_path)
        try:
            if not journal.ledger.states:
                await self._rebuild_from_results()
            await self._adopt_results()
            await self._check_output()
            self._survey()
            await self._release_ambiguous()
            self._submitting = SubmitSettings(
                concurrency=self.settings.submit_concurrency,
                lost_answer_wait=self.settings.lost_answer_wait,
                api_timeout=self.options.api_timeout,
                retry=self.options.retry,
                webhook_url=self.options.webhook_url,
            )
            async with anyio.create_task_group() as helpers:
                self._helpers = helpers
                if self.options.handle_signals:
                    helpers.start_soon(self._watch_signals, helpers)
                if self.options.deadline is not None:
                    helpers.start_soon(self._stop_at_deadline, helpers, self.options.deadline)
                if self.on_progress is not None:
                    helpers.start_soon(self._report_progress)
                with anyio.CancelScope() as scope:
                    self._work_scope = scope
                    try:
                        await self._run_jobs()
                    except DiskError as exc:  # before any worker ran: checking lost submits
                        self._stop_for_disk(exc)
                helpers.cancel_scope.cancel()
            self._say_held()
        finally:
            self._helpers = None
            await self._close_writer()  # before the journal closes: it may note lost images
            journal.close()
        return self._result()

    def _survey(self) -> None:
        """The one pass before anything is sent: count the jobs and fix their order, check that
        the name template gives each its own file, and pick out the jobs an earlier run left
        running remotely (they are polled before anything new is submitted)."""
        names: dict[str, int] = {}
        states = self.states
        retry_failed = self.options.retry_failed
        var_names: set[str] = set()
        by_model: dict[str, list[int]] = {}  # model → [finished before, jobs]
        unpriced: dict[str, int] = {}  # model → jobs to run that --budget cannot price
        failed_before = ambiguous_before = 0
        for spec in self.specs():
            self.keys.append(sys.intern(spec.key))  # one string with the ledger's
            var_names.update(spec.vars)
            model = by_model.setdefault(spec.model, [0, 0])
            model[1] += 1
            state = states.get(spec.key)
            if state is None:
                pass
            elif self.options.retry_ambiguous and is_ambiguous(state):
                self._released.append(spec)
            elif state.done is not None:
                # Counted as skipped at once, not as the producer reaches it.
                again = state.done == RecordStatus.FAILED and retry_failed
                model[0] += not again
                failed_before += state.done == RecordStatus.FAILED and not again
                ambiguous_before += state.done == RecordStatus.AMBIGUOUS
            elif state.remote:
                self._resumed.append(spec)
            if (state is None or state.done is None) and not self.budget.covers(spec):
                unpriced[spec.model] = unpriced.get(spec.model, 0) + 1
            if self._name_stem == DEFAULT_TEMPLATE:
                continue  # keys are unique by construction
            add_name(names, self._name_stem, self.settings.name_template, spec)
        if names:
            check_names(names, self.settings.name_template, self.folder.images)
            for crowded, files in crowded_folders(names).items():
                log.warning(
                    "images/%s would hold %d files; the Hugging Face Hub takes fewer than "
                    "%d a folder: add {bucket}/ to the name template",
                    crowded,
                    files,
                    BUCKET_SIZE,
                )
        self.writer.var_names = tuple(sorted(var_names))
        self.journal.note(
            Planned(
                {m: (done, jobs) for m, (done, jobs) in by_model.items()},
                (),  # a pool's keys are counted as they come into use
                failed_before,
                ambiguous_before,
            )
        )
        if unpriced:  # said once, before anything is sent
            log.warning("%s", cannot_price(unpriced))

    async def _release_ambiguous(self) -> None:
        """--retry-ambiguous: say what sending them again may cost, then free them to go."""
        released, self._released = self._released, []
        if not released:
            return
        risk = risk_of(self.states, (spec.key for spec in released))
        cost = worst_cost(risk, ((spec.usd, spec.units) for spec in released))
        log.warning("--retry-ambiguous: %s", risk.sentence(cost))
        await self.journal.record_many(
            Released(spec.key, self.states[spec.key].attempts) for spec in released
        )
        self._again.update(spec.key for spec in released)

    async def _run_jobs(self) -> None:
        await self._open_writer()
        await self._recover()
        # Room for every key's cap, but never more than the jobs there are: a pool of 10,000
        # keys for 6 jobs runs 6 workers' worth, not 80,000.
        jobs = max(1, self.counts.total - self.counts.skipped)
        room = min(self.settings.concurrency * len(self.pool.keys), jobs)
        send, receive = anyio.create_memory_object_stream[JobSpec](room)
        async with anyio.create_task_group() as workers:
            workers.start_soon(self._produce, send)
            for _ in range(2 * room):
                workers.start_soon(self._work, receive.clone())
            receive.close()

    async def _recover(self) -> None:
        """Match the POSTs an earlier run left unanswered, each in its own key's listing."""
        by_account: dict[Account, dict[str, KeyState]] = {}
        for key, state in self.states.items():
            if state.pending_since is not None and state.done is None:
                account = self.pool.owner(state)
                if account is not None:  # else a key this run lacks: left pending, deferred
                    by_account.setdefault(account, {})[key] = state
        for account, owned in by_account.items():
            try:
                await account.submits.recover(owned, self.started)
            except FatalApiError as exc:  # left pending: a run with a working key checks them
                self._refused(account, exc)

    def _refused(self, account: Account, exc: FatalApiError) -> None:
        """The API refused a key (401, 402): retire it, said once for the key; stop
        submitting once none is left."""
        if not self.pool.retire(account, str(exc)):
            return
        self._refusals.add(exc.status)
        if self.pool.several:
            self.journal.note(KeyRetired(account.name, str(exc)))
        if self.pool.any_live:
            log.warning("%s retired: %s; the other keys carry the run", account.label, exc)
            return
        if self.pool.several:
            log.warning("%s retired: %s", account.label, exc)
        self._stop_for_refusals(exc)

    def _stop_for_refusals(self, exc: FatalApiError) -> None:
        """Every key was refused: stop, and say what would help (not "run it again")."""
        keys = self.pool.keys
        if self.fatal is None:
            self.fatal = exc
            self.advice = refusals_advice(self._refusals | {exc.status}, keys)
        if self.stopping is None:
            why = "every API key was refused" if len(keys) > 1 else str(exc)
            if self._running_remotely():
                self.stop(why)
            else:  # nothing to wait for: say so, once
                self.stopping = why
                log.error("%s: no more submits, and no job is running", why)

    def _running_remotely(self) -> int:
        """Jobs of this run's keys that run at the API now (a job id, no outcome yet)."""
        return sum(len(account.tracker.watches) for account in self.pool.accounts)

    def _unwell(self, account: Account, reason: str) -> None:
        """A key's submits keep being refused: its jobs not created go to the other keys."""
        now = self.clock.monotonic()
        if account.health.cooling(now):
            return  # said when it began to cool
        seconds = self.pool.cool(account)
        if self.pool.several:
            self.journal.note(KeyCooling(account.name, reason))
        log.warning(
            "%s: %s; the jobs it has not created go to the other keys, and it is tried "
            "again in %g s",
            account.label,
            reason,
            seconds,
        )

    def _say_held(self) -> None:
        """Per key, the jobs left with it unsettled (its lost submits could not be checked,
        or it could not be asked about them): a later run with that key settles them."""
        for account in self.pool.accounts:
            for why, jobs in account.held.items():
                log.warning(
                    "%s holds %d job(s) it could not settle (%s): a later run with this key "
                    "checks them, and never sends them with another",
                    account.label,
                    jobs,
                    why,
                )

    async def _produce(self, send: ObjectSendStream[JobSpec]) -> None:
        """Feed specs to the workers: jobs already running remotely first, then new ones.

        Which jobs are resumed was decided once, before any ran: a job's state changes while
        it runs, and a job handed out twice could be submitted twice.
        """
        resumed, self._resumed = self._resumed, []
        resumed_keys = {spec.key for spec in resumed}
        async with send:
            for spec in resumed:
                await send.send(spec)
            if self.counts.skipped + len(resumed) >= self.counts.total:
                return  # every other job finished earlier: no need to expand the manifest again
            for spec in self.specs():
                if spec.key in resumed_keys or self._already_done(spec.key):
                    continue
                if self.stopping:
                    return
                await send.send(spec)

    def _already_done(self, key: str) -> bool:
        state = self.states.get(key)
        if state is None or state.done is None:
            return False
        if state.done == RecordStatus.FAILED and self.options.retry_failed:
            state.reopen()
            self._again.add(key)
            return False
        return True  # counted as skipped by _survey

    async def _work(self, receive: ObjectReceiveStream[JobSpec]) -> None:
        async with receive:
            async for spec in receive:
                await self._run_job(spec)

    async def _run_job(self, spec: JobSpec) -> None:
        state = self.ledger.state(spec.key)
        if state.remote:
            self.journal.note(Resumed(spec.key))
        try:
            try:
                outcome = await self._drive(spec, state)
            except FatalApiError as exc:
                self._stop_for_refusals(exc)
                outcome = NotSubmitted(str(exc))
            await self._finish(spec, state, outcome)
        except DiskError as exc:
            self._stop_for_disk(exc)

    async def _drive(self, spec: JobSpec, state: KeyState) -> Outcome:
        """Take one job from wherever the journal left it to its outcome."""
        while True:
            if state.doubt is not None:
                return await self._collect_unmatched(state)
            if state.pending_since is not None:
                return Deferred("a lost submit could not be checked yet; the next run checks it")
            if state.job_id is None and self.stopping:
                return NotSubmitted("the run is stopping")
            ended, account = await self._run_remotely(spec, state)
            if ended is None:
                continue  # sent to no key yet, or ambiguous: look again
            if not isinstance(ended, RemoteJob):
                return ended
            assert account is not None
            if ended.status == JobStatus.COMPLETED:
                return await self._fetch(account, spec, ended)
            reason = ended.error or f"the job was {ended.status.value}"
            if state.submitted_at is not None and state.submitted_at >= self.started:
                self.budget.refund(spec)  # failed and cancelled jobs are not billed
            if ended.status == JobStatus.FAILED and state.accepted < self.settings.max_attempts:
                await self.journal.record(Retry(spec.key, state.attempts, ended.job_id, reason))
                log.debug("↻ retry %s after remote failure: %s", spec.key, reason)
                continue
            return Failed(reason)

    async def _run_remotely(
        self, spec: JobSpec, state: KeyState
    ) -> tuple[RemoteJob | Outcome | None, Account | None]:
        """Submit the job unless it runs already, and follow it to its end on the server,
        holding a slot of its account meanwhile. None: nothing is settled yet (its key was
        refused before the job was sent, or its submit ended ambiguous)."""
        if state.job_id is not None:
            account = self.pool.owner(state)
            if account is None:
                return self._keyless(state), None
            async with account.gate.slot(force=True):
                return await self._follow_with(account, spec, state, state.job_id), account
        try:
            async with self.pool.slot() as account:
                try:
                    submitted = await account.submits.submit(spec, state)
                except FatalApiError as exc:  # nothing was created: another key may send it
                    self._refused(account, exc)
                    return (None if self.pool.any_live else NotSubmitted(str(exc))), account
                except KeyUnwell as exc:  # nothing was created: another key sends it
                    self._unwell(account, str(exc))
                    return None, account
                if submitted is not None or state.job_id is None:
                    return submitted, account
                return await self._follow_with(account, spec, state, state.job_id), account
        except NoKeyLeft:
            return NotSubmitted(str(self.fatal or "every API key was refused")), None

    def _keyless(self, state: KeyState) -> Deferred:
        return Deferred(
            f"it was submitted with key {state.account}, which this run does not have: "
            "run with that key to collect it"
        )

    async def _follow_with(
        self, account: Account, spec: JobSpec, state: KeyState, job_id: str
    ) -> RemoteJob | Outcome:
        try:
            return await self._follow(account, spec, state, job_id)
        except FatalApiError as exc:
            self._refused(account, exc)
            return Deferred(f"key {account.name} was refused while following job {job_id}: {exc}")

    async def _fetch(self, account: Account, spec: JobSpec, ended: RemoteJob) -> Outcome:
        """Download a completed job's images (its server slot already free)."""
        if not ended.urls:
            return Failed("the job completed without any result URL")
        noticed = self.clock.time()
        stem = render_name(self._name_stem, spec)
        provenance = spec_provenance(spec) if self.options.embed_metadata else None
        try:
            files = await account.tracker.download_all(ended, stem, spec.key, provenance)
        except FatalApiError as exc:  # refreshing its URLs was refused
            self._refused(account, exc)
            return Deferred(f"key {account.name} was refused while fetching its images: {exc}")
        return Completed(ended, files, noticed) if isinstance(files, list) else files

    async def _follow(
        self, account: Account, spec: JobSpec, state: KeyState, job_id: str
    ) -> RemoteJob | Outcome:
        """Poll a job to its end; with --cancel-on-exit, cancel it when the run stops."""
        sent = state.submitted_at
        polls = account.tracker.wait(
            job_id,
            spec.model,
            state.answered_at,
            created_after=None if sent is None else sent + self.ledger.skew.low,
            # Only this run's submits carry its webhook address (a new secret each run).
            webhook=self.options.webhook_url is not None and (sent or 0) >= self.started,
        )
        if not self.options.cancel_on_exit:
            return await polls
        with anyio.CancelScope() as scope:
            self._follow_scopes.add(scope)
            try:
                if self.stopping is None:
                    return await polls
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:  # the whole run is aborting
                    await self._cancel_on_exit(account, spec.key, state, job_id)
                raise
            finally:
                self._follow_scopes.discard(scope)
                polls.close()  # not awaited when the run was stopping already
        # Stopped (our scope cancelled, or the run was stopping already): cancel the job.
        return await self._cancel_on_exit(account, spec.key, state, job_id)

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
        async with account.gate.slot(force=True):
            for job_id in state.candidates:
                if job_id in self._collected:
                    continue
                self._collected.add(job_id)
                try:
                    ended = await account.tracker.wait(job_id)
                    if not isinstance(ended, RemoteJob) or ended.status != JobStatus.COMPLETED:
                        continue
                    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:100]
                    got = await account.tracker.download_all(
                        ended, f"_unmatched/{safe_id}", safe_id
                    )
                except FatalApiError as exc:
                    self._refused(account, exc)
                    self._collected.discard(job_id)
                    return Deferred(f"key {account.name} was refused: {exc}")
                if isinstance(got, list):
                    files += got
        return Ambiguous(state.candidates, files)

    async def _finish(self, spec: JobSpec, state: KeyState, outcome: Outcome) -> None:
        """Record a finished job, or count one that will continue in a later run."""
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
            self._count_unfinished(spec, outcome)
            if isinstance(outcome, Deferred) and not state.settled and self.pool.several:
                holder = self.pool.opened(state.account)
                if holder is not None:
                    holder.held[outcome.reason] = holder.held.get(outcome.reason, 0) + 1
            return
        record = self.writer.assign(record)
        await self.journal.record(Done(spec.key, record))
        self.writer.finished(record, again=spec.key in self._again)
        if isinstance(outcome, Completed):
            files = len(outcome.files)
            plural = "" if files == 1 else "s"
            log.debug("← done %s %s (%d file%s)", spec.key, spec.model, files, plural)
        elif isinstance(outcome, Failed):
            log.warning("! failed %s %s: %s", spec.key, spec.model, outcome.reason, extra=PER_JOB)
        else:
            log.warning(
                "? ambiguous %s %s: %s", spec.key, spec.model, record["error"], extra=PER_JOB
            )

    def _count_unfinished(self, spec: JobSpec, outcome: Outcome) -> None:
        if isinstance(outcome, Deferred):
            why = LeftOver.DEFERRED
            log.warning("… %s left for the next run: %s", spec.key, outcome.reason, extra=PER_JOB)
        elif isinstance(outcome, Cancelled):
            why = LeftOver.CANCELLED
            log.debug("× cancelled %s (job %s) on exit", spec.key, outcome.job_id)
        elif isinstance(outcome, NotSubmitted) and (outcome.over_budget or outcome.unpriced):
            why = LeftOver.OVER_BUDGET if outcome.over_budget else LeftOver.UNPRICED
            log.debug("$ not submitting %s: %s", spec.key, outcome.reason)
        else:
            why = LeftOver.NOT_STARTED
        self.journal.note(Unfinished(spec.key, why))

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            self.on_progress(self)
            await anyio.sleep(0.5)

    def _result(self) -> RunResult:
        stopped = self.stopping
        reasons = []
        if self.counts.over_budget:
            reasons.append(
                f"budget reached: {counted(self.counts.over_budget, 'job')} not submitted"
            )
        if self.counts.unpriced:
            reasons.append(
                f"{counted(self.counts.unpriced, 'job')} not submitted: "
                "--budget cannot price their model"
            )
        unsaved = self.writer.unsaved
        if unsaved:
            where = self.writer.destination.url or str(self.folder.root)
            reasons.append(
                f"{len(unsaved)} shard(s) not yet at {where} ({', '.join(unsaved[:3])}"
                f"{', …' if len(unsaved) > 3 else ''}): the next run puts them there"
            )
        lost = len(self.writer.lost_jobs())
        if lost:
            reasons.append(f"{lost} job(s) lost their images: the next run fetches them again")
        if reasons and (stopped is None or unsaved or lost):
            stopped = "; ".join(([stopped] if stopped else []) + reasons)
        return RunResult(
            self.counts, stopped=stopped, fatal=self.fatal is not None, advice=self.advice
        )


def refusal_advice(exc: FatalApiError, key: ApiKey | None) -> str:
    """What helps when the API refused ``key`` (pure)."""
    place = key.place if key is not None else None
    if exc.status == 402:
        whose = f"the account of {place}" if place else "the account"
        return f"add credits to {whose}, then run the same command again"
    what = place or "the API key"
    return f"check {what}: revoked or mistyped? (Krea: Settings → API)"


def refusals_advice(statuses: set[int | None], keys: Sequence[ApiKey]) -> str:
    """What helps when the API refused every key, by the causes it gave (pure)."""
    source = keys[0].source if keys else None
    if len(keys) == 1:
        key = keys[0]
        one = FatalApiError("", status=402 if statuses == {402} else 401)
        return refusal_advice(one, key)
    where = f" in {source}" if source else ""
    parts = []
    if statuses - {402}:
        parts.append(f"check the keys{where}: revoked or mistyped? (Krea: Settings → API)")
    if 402 in statuses:
        parts.append("add credits to the accounts out of them, then run the same command again")
    return "; ".join(parts)
