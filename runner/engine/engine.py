"""The engine: every job of a manifest from submit to recorded outcome, resumably.

It schedules; the parts do the work. One task group owns everything: a producer feeding specs
into a bounded stream, workers that each hand one job at a time to the ``JobFlow`` and record
its outcome, and the helpers (signals, deadline, progress, each key's listing). The pool
admits ``concurrency`` jobs per key to the server at once; there are twice as many workers, so
a job downloading its images (its server slot already free) never keeps the next one from
being submitted. Stopping is two-phase (``Stopper``): stop submitting and let jobs in flight
finish (drain), then cancel what is left (abort).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from runner.api.server_clock import ServerClock
from runner.engine.accounts import KeyRing
from runner.engine.assembly import Parts, Shared
from runner.engine.budget import Budget
from runner.engine.coordinator import Coordinator
from runner.engine.deliveries import Deliveries
from runner.engine.flow import FlowPolicy
from runner.engine.keeper import OutputKeeper
from runner.engine.options import EngineOptions
from runner.engine.result import run_result
from runner.engine.retry import Clock, SystemClock
from runner.engine.stopper import Stopper
from runner.engine.survey import Survey, SurveyRules, release_ambiguous, specs_of, survey
from runner.engine.watching import ListingStats
from runner.errors import DiskError
from runner.jobspec import JobSpec
from runner.manifest import Manifest
from runner.outputs import OutputFolder
from runner.outputs.writers import Writer, open_writer
from runner.state.events import Reopened
from runner.state.figures import Counts, RunResult, RunStats, stats_of
from runner.state.journal import Journal
from runner.state.ledger import KeyState, RunLedger
from runner.state.phase import Phase

log = logging.getLogger(__name__)


class Engine:
    """Runs one manifest into one output folder (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        folder: OutputFolder,
        ring: KeyRing,
        options: EngineOptions,
        *,
        clock: Clock | None = None,
        on_progress: Callable[[Engine], None] | None = None,
        writer: Writer | None = None,
        deliveries: Deliveries | None = None,
        server_clock: ServerClock | None = None,
        coordinator: Coordinator | None = None,
        budget: Budget | None = None,
    ) -> None:
        settings = manifest.settings
        retry = replace(options.retry, max_retry_after=settings.max_retry_after)
        self.options = options = replace(options, retry=retry)
        self.manifest, self.folder, self.ring = manifest, folder, ring
        self.writer = writer or open_writer(
            folder, settings.format, settings.shard_size, var_names=manifest.var_names
        )
        self.clock: Clock = clock or SystemClock()
        self.shared = Shared(
            manifest,
            options,
            self.clock,
            server_clock or ServerClock(),
            budget or Budget(options.budget, options.budget_unit),
            deliveries or Deliveries(),
            random.Random(),
            coordinator,
        )
        self.stopper = Stopper(self.clock, options.drain_timeout, folder.root)
        self.on_progress = on_progress
        self.started = self.clock.time()
        self.keys: list[str] = []  # every job's key, in manifest order
        self._journal: Journal | None = None
        self._parts: Parts | None = None

    # ---- what the views and the caller read ---------------------------------------------------

    @property
    def ledger(self) -> RunLedger:
        if self._journal is None:
            raise RuntimeError("the engine is not running")
        return self._journal.ledger

    @property
    def states(self) -> dict[str, KeyState]:
        return self.ledger.states

    @property
    def counts(self) -> Counts:
        """This run's figures, as the ledger folded them (zero before the run starts)."""
        return self._journal.ledger.counts if self._journal is not None else Counts()

    @property
    def stopping(self) -> str | None:
        return self.stopper.reason

    def stop(self, reason: str) -> None:
        self.stopper.stop(reason)

    def abort(self) -> None:
        self.stopper.abort()

    def stats(self) -> RunStats:
        """The run's figures now, for the views."""
        pool = self._parts.pool if self._parts is not None else None
        return stats_of(
            self.counts,
            self.started,
            self.clock.time(),
            in_flight=pool.in_use if pool is not None else 0,
            posting=pool.posting() if pool is not None else 0,
            requests=pool.requests() if pool is not None else Counter(),
            running=pool.running() if pool is not None else {},
        )

    def listing_stats(self) -> ListingStats | None:
        """What the listing did, over every key (None: the run did not list)."""
        accounts = self._parts.pool.accounts if self._parts is not None else []
        return ListingStats.total([a.lister.stats for a in accounts if a.lister is not None])

    def specs(self) -> Iterator[JobSpec]:
        return specs_of(self.manifest, self.options)

    # ---- the run ------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        journal = self._journal = Journal.open(self.folder.journal_path)
        keeper = OutputKeeper(self.folder, self.writer, journal)
        try:
            if not journal.ledger.states:
                await keeper.rebuild_from_results()
            await keeper.adopt_results()
            await keeper.check()
            found = self._survey(journal)
            await release_ambiguous(journal, found.released)
            self.shared.server_clock.start_from(journal.ledger.skew)
            async with anyio.create_task_group() as helpers:
                self._start_helpers(helpers)
                policy = FlowPolicy.of(self.manifest.settings, self.options, self.started, found)
                self._parts = parts = Parts(
                    self.shared, self.ring, journal, self.writer, self.stopper, helpers, policy
                )
                with anyio.CancelScope() as scope:
                    self.stopper.work = scope
                    try:
                        await self._run_jobs(parts, keeper, found)
                    except DiskError as exc:  # before any worker ran: checking lost submits
                        self.stopper.stop_for_disk(exc)
                helpers.cancel_scope.cancel()
            parts.keys.say_held()
        finally:
            await keeper.close()  # before the journal closes: it may note lost images
            journal.close()
        return run_result(self.counts, self.stopper, self.writer, self.folder)

    def _survey(self, journal: Journal) -> Survey:
        rules = SurveyRules.of(self.manifest.settings, self.options, self.folder.images)
        found = survey(self.specs(), journal.ledger.states, rules, self.shared.budget)
        self.keys = found.keys
        journal.note(found.planned)
        return found

    def _start_helpers(self, helpers: TaskGroup) -> None:
        if self.options.handle_signals:
            helpers.start_soon(self.stopper.watch_signals, helpers)
        if self.options.deadline is not None:
            deadline, flag = self.options.deadline, self.options.deadline_flag
            helpers.start_soon(self.stopper.stop_at_deadline, helpers, deadline, flag)
        if self.on_progress is not None:
            helpers.start_soon(self._report_progress)
        if self.shared.coordinator is not None:
            helpers.start_soon(self.shared.coordinator.keep_up)
            helpers.start_soon(self.stopper.stop_when_lost, self.shared.coordinator)

    async def _run_jobs(self, parts: Parts, keeper: OutputKeeper, found: Survey) -> None:
        await keeper.open()
        await parts.recover(self.started)
        # Room for every key's cap, but never more than the jobs there are: a pool of 10,000
        # keys for 6 jobs runs 6 workers' worth, not 80,000.
        jobs = max(1, self.counts.total - self.counts.skipped)
        room = min(self.manifest.settings.concurrency * len(parts.pool.keys), jobs)
        send, receive = anyio.create_memory_object_stream[JobSpec](room)
        async with anyio.create_task_group() as workers:
            workers.start_soon(self._produce, send, found)
            for _ in range(2 * room):
                workers.start_soon(self._work, parts, receive.clone())
            receive.close()

    async def _produce(self, send: ObjectSendStream[JobSpec], found: Survey) -> None:
        """Feed specs to the workers: jobs already running remotely first, then new ones.

        Which jobs are resumed was decided once, before any ran: a job's state changes while
        it runs, and a job handed out twice could be submitted twice.
        """
        resumed_keys = {spec.key for spec in found.resumed}
        journal = self.ledger
        async with send:
            for spec in found.resumed:
                await send.send(spec)
            if self.counts.skipped + len(found.resumed) >= self.counts.total:
                return  # every other job finished earlier: no need to expand the manifest again
            for spec in self.specs():
                state = journal.states.get(spec.key)
                if spec.key in resumed_keys or (state is not None and state.phase.finished):
                    if spec.key not in found.reopened or state is None:
                        continue
                    self._journal_reopened(spec.key, state)
                if self.stopper.stopping:
                    return
                await send.send(spec)

    def _journal_reopened(self, key: str, state: KeyState) -> None:
        """--retry-failed: the job runs again, journaled ahead of its next submit."""
        if state.phase is Phase.FAILED and self._journal is not None:
            self._journal.record_soon(Reopened(key, state.attempts))

    async def _work(self, parts: Parts, receive: ObjectReceiveStream[JobSpec]) -> None:
        async with receive:
            async for spec in receive:
                try:
                    outcome = await parts.flow.run(spec)
                    await parts.recorder.record(spec, outcome)
                except DiskError as exc:
                    self.stopper.stop_for_disk(exc)

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            self.on_progress(self)
            await self.clock.sleep(0.5)
