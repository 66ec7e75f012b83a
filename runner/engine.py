"""The engine: submit, poll, download and record every job of a manifest, resumably.

One task group owns everything: a producer feeding specs into a bounded stream, ``concurrency``
workers that each drive one job at a time from submit to recorded outcome, and the helpers
(signals, progress). Submits are serialised: with one POST in flight at a time, a POST whose
answer is lost can be matched to the job it created by creation time alone, so nothing is ever
paid for twice. Polls and downloads run fully in parallel.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from runner.backoff import NETWORK, OVERLOAD, jittered
from runner.client import AmbiguousSubmit, ExpiredUrl, KreaClient
from runner.errors import FatalApiError, PermanentApiError, TransientApiError, UsageError
from runner.jobspec import JobSpec
from runner.journal import Journal, KeyState, mark_done
from runner.limiter import AdaptiveLimit
from runner.manifest import Manifest, expand
from runner.merge import in_shard
from runner.naming import DEFAULT_TEMPLATE, check_template, render_name
from runner.outputs import OutputFolder, image_extension, relative
from runner.records import completed_record, failed_record
from runner.remote import JobStatus, RemoteJob
from runner.settings import RunSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

SKEW_MARGIN = 5.0  # seconds of clock difference assumed before any submit has measured it


class JobFailed(Exception):
    """This job ends failed, with the reason given."""


class JobDeferred(Exception):
    """This job cannot finish in this run but is not lost: the next run picks it up."""


@dataclass(frozen=True)
class EngineOptions:
    """How a run behaves beyond the manifest's run settings."""

    retry_failed: bool = False
    limit: int | None = None  # only the first N jobs of the manifest
    drain_timeout: float = 120.0  # after the first signal, wait this long for jobs in flight
    cancel_on_exit: bool = False  # cancel remote jobs still running when interrupted
    handle_signals: bool = True
    backoff_scale: float = 1.0  # tests shrink every backoff with this
    reconcile_delay: float = 2.0  # wait before looking for the job a lost POST created
    max_transient: int = 8  # consecutive transient errors before a step gives up
    api_timeout: float = 30.0
    deadline: float | None = None  # epoch seconds: stop submitting then, drain, exit 3
    budget: float | None = None  # compute units this run may commit to
    shard: tuple[int, int] | None = None  # (I, N): only the jobs of shard I of N


@dataclass
class Counts:
    """What happened during a run, for progress and summary.json."""

    total: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0  # finished in an earlier run
    resumed: int = 0  # already submitted by an earlier run, polled again
    deferred: int = 0  # left for the next run (download or check failed)
    not_started: int = 0  # never submitted because the run stopped early
    submits: int = 0  # POSTs accepted by the server
    retries: int = 0  # resubmits after a remote failure
    ambiguous: int = 0  # POSTs whose answer was lost
    adopted: int = 0  # ... and whose job we found
    ambiguous_lost: int = 0  # ... and which created nothing (resubmitted)
    unresolved: int = 0  # ... and which we could not match (failed, not resubmitted)
    over_budget: int = 0  # not submitted: it would have taken the spend over --budget
    overload_429: int = 0  # "maximum number of concurrent jobs"
    rate_limited_429: int = 0  # "too many requests"
    transient_errors: int = 0
    downloads: int = 0
    bytes: int = 0
    spend_units: float = 0.0

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.skipped

    @property
    def unfinished(self) -> int:
        """Jobs this run did not bring to an outcome: the next run continues them."""
        return max(0, self.total - self.finished)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["unfinished"] = self.unfinished
        data["spend_units"] = round(self.spend_units, 3)
        return data


@dataclass
class RunResult:
    """The outcome of ``run_batch``: counts, the reason it stopped early (if it did), files."""

    counts: Counts
    stopped: str | None = None  # "interrupted", "fatal: …" or None
    fatal: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 4
        if self.stopped or self.counts.unfinished > self.counts.deferred:
            return 3
        if self.counts.failed or self.counts.deferred:
            return 1
        return 0


class Engine:
    """Runs one manifest into one output folder (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        folder: OutputFolder,
        client: KreaClient,
        options: EngineOptions,
        *,
        on_progress: Callable[[Engine], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.settings: RunSettings = manifest.settings
        self.folder = folder
        self.client = client
        self.options = options
        self.on_progress = on_progress
        self.counts = Counts()
        self.gate = AdaptiveLimit(self.settings.concurrency)
        self.rng = random.Random()
        self.stopping: str | None = None
        self.interrupted = False
        self.fatal: FatalApiError | None = None
        self.started = time.time()
        self._submit_lock = anyio.Lock()
        self._journal: Journal | None = None
        self.states: dict[str, KeyState] = {}
        self.known_ids: set[str] = set()
        self.skew: tuple[float, float] | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._name_stem = check_template(self.settings.name_template)
        self.committed_units = 0.0  # estimated cost of the jobs this run had accepted

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("the engine is not running")
        return self._journal

    def specs(self) -> Iterator[JobSpec]:
        specs: Iterator[JobSpec] = iter(expand(self.manifest))
        if self.options.shard is not None:
            shard = self.options.shard
            specs = (spec for spec in specs if in_shard(spec.key, shard))
        return itertools.islice(specs, self.options.limit)

    # ---- the run ----------------------------------------------------------------------------

    def _count_and_check_names(self) -> None:
        """Count the jobs, and make sure the name template gives each its own file."""
        names: dict[str, int] = {}
        for spec in self.specs():
            self.counts.total += 1
            if self._name_stem == DEFAULT_TEMPLATE:
                continue  # keys are unique by construction
            name = render_name(self._name_stem, spec)
            if name in names:
                raise UsageError(
                    f"the name template {self.settings.name_template!r} gives jobs {names[name]} "
                    f"and {spec.index} the same file name images/{name}: add {{key}} or {{index}}"
                )
            names[name] = spec.index

    async def run(self) -> RunResult:
        self._count_and_check_names()
        journal, replay = Journal.open(self.folder.journal_path)
        self._journal = journal
        self.states, self.known_ids, self.skew = replay.states, replay.known_ids, replay.skew
        try:
            async with anyio.create_task_group() as helpers:
                if self.options.handle_signals:
                    helpers.start_soon(self._watch_signals, helpers)
                if self.options.deadline is not None:
                    helpers.start_soon(self._stop_at_deadline, helpers, self.options.deadline)
                if self.on_progress is not None:
                    helpers.start_soon(self._report_progress)
                with anyio.CancelScope() as scope:
                    self._work_scope = scope
                    await self._run_jobs()
                helpers.cancel_scope.cancel()
        finally:
            journal.close()
        return self._result()

    async def _run_jobs(self) -> None:
        send, receive = anyio.create_memory_object_stream[JobSpec](self.settings.concurrency)
        async with anyio.create_task_group() as workers:
            workers.start_soon(self._produce, send)
            for _ in range(self.settings.concurrency):
                workers.start_soon(self._work, receive.clone())
            receive.close()

    async def _produce(self, send: ObjectSendStream[JobSpec]) -> None:
        """Feed specs to the workers: jobs already running remotely first, then new ones.

        Which jobs are resumed is decided once, before any runs: a job's state changes while
        it runs, and a job handed out twice could be submitted twice.
        """
        resumed = {
            key
            for key, state in self.states.items()
            if state.job_id is not None or state.pending_since is not None
        }
        async with send:
            for resumed_pass in (True, False):
                for spec in self.specs():
                    if (spec.key in resumed) != resumed_pass:
                        continue
                    if not resumed_pass and self._already_done(self.states.get(spec.key)):
                        continue
                    if self.stopping:
                        return
                    await send.send(spec)

    def _already_done(self, state: KeyState | None) -> bool:
        if state is None or (state.done is None and not state.unresolved):
            return False
        failed = state.unresolved or state.done != "completed"
        if failed and self.options.retry_failed:
            state.done, state.done_at, state.unresolved, state.accepted = None, None, False, 0
            return False
        self.counts.skipped += 1
        return True

    async def _work(self, receive: ObjectReceiveStream[JobSpec]) -> None:
        async with receive:
            async for spec in receive:
                await self._run_job(spec)

    async def _run_job(self, spec: JobSpec) -> None:
        state = self.states.setdefault(spec.key, KeyState())
        try:
            record = await self._drive(spec, state)
        except JobFailed as exc:
            record = failed_record(spec, state, str(exc))
        except JobDeferred as exc:
            self.counts.deferred += 1
            log.warning("… %s left for the next run: %s", spec.key, exc)
            return
        except _NotStarted:
            self.counts.not_started += 1
            return
        except _OverBudget as exc:
            self.counts.over_budget += 1
            log.info("$ not submitting %s: %s", spec.key, exc)
            return
        except FatalApiError as exc:
            self._stop_for_fatal(exc)
            self.counts.not_started += 1
            return
        offset = await self.journal.append("done", spec.key, record=record)
        mark_done(state, record, offset)
        self.folder.append_result(record)
        if record["status"] == "completed":
            self.counts.completed += 1
            self.counts.spend_units += record.get("cost_units") or 0.0
            log.info(
                "← done %s %s (%d file%s)",
                spec.key,
                spec.model,
                len(record["files"]),
                "" if len(record["files"]) == 1 else "s",
            )
        else:
            self.counts.failed += 1
            log.warning("! failed %s %s: %s", spec.key, spec.model, record["error"])

    async def _drive(self, spec: JobSpec, state: KeyState) -> dict[str, Any]:
        """Take one job from wherever the journal left it to its final record."""
        if state.job_id is not None or state.pending_since is not None:
            self.counts.resumed += 1
        while True:
            if state.job_id is None:
                if self.stopping:
                    raise _NotStarted
                await self.gate.acquire()
                try:
                    await self._submit(spec, state)
                except BaseException:
                    self.gate.release()
                    raise
            else:
                self.gate.take()
            try:
                remote = await self._poll(spec, state)
            finally:
                self.gate.release()
            if remote.status == JobStatus.COMPLETED:
                files = await self._download_all(spec, state, remote)
                return completed_record(spec, state, remote, files)
            reason = remote.error or f"the job was {remote.status.value}"
            if state.submitted_at is not None and state.submitted_at >= self.started:
                self.committed_units -= spec.units or 0.0  # failed jobs are not billed
            if remote.status == JobStatus.FAILED and state.accepted < self.settings.max_attempts:
                await self.journal.append(
                    "retry", spec.key, a=state.attempts, id=remote.job_id, error=reason
                )
                state.job_id = None
                self.counts.retries += 1
                log.info("↻ retry %s after remote failure: %s", spec.key, reason)
                continue
            raise JobFailed(reason)

    # ---- submitting ---------------------------------------------------------------------------

    async def _submit(self, spec: JobSpec, state: KeyState) -> None:
        """Submit until the server holds exactly one job for this attempt; sets state.job_id."""
        errors = throttled = 0
        while True:
            async with self._submit_lock:
                if state.pending_since is not None:
                    # An earlier run (or this one) sent a POST whose answer never came back.
                    window_end = min(state.pending_since + self.options.api_timeout, self.started)
                    if await self._reconcile(spec, state, state.pending_since, window_end):
                        return
                if self.stopping:
                    raise _NotStarted
                self._check_budget(spec)
                error = await self._post(spec, state)
                if error is None:
                    return
            if error.status == 429:
                # Being told to slow down is no reason to give up on a job: wait, as asked.
                if error.overload:
                    self.counts.overload_429 += 1
                    self.gate.overloaded()
                else:
                    self.counts.rate_limited_429 += 1
                wait = OVERLOAD.delay(min(throttled, 3), error.retry_after, self.rng)
                throttled += 1
            else:
                errors += 1
                if errors > self.options.max_transient:
                    raise JobFailed(f"gave up submitting after {errors} tries: {error}")
                wait = NETWORK.delay(errors - 1, error.retry_after, self.rng)
            self.counts.transient_errors += 1
            log.info(
                "↻ submit of %s in %.1fs: %s", spec.key, wait * self.options.backoff_scale, error
            )
            self.gate.release()  # do not hold a slot while waiting
            await anyio.sleep(wait * self.options.backoff_scale)
            await self.gate.acquire()

    def _check_budget(self, spec: JobSpec) -> None:
        budget = self.options.budget
        if budget is None:
            return
        if spec.units is None:
            raise _OverBudget(f"{spec.model} has no published price, so --budget cannot cover it")
        if self.committed_units + spec.units > budget + 1e-9:
            raise _OverBudget(
                f"{spec.units:g} CU would take the spend past the budget "
                f"({self.committed_units:g} of {budget:g} CU committed)"
            )

    async def _post(self, spec: JobSpec, state: KeyState) -> TransientApiError | None:
        """One POST under the submit lock; returns the error to back off from, if any."""
        attempt = state.attempts + 1
        sent = time.time()
        await self.journal.append("submitting", spec.key, a=attempt, t=sent)
        state.attempts, state.pending_since = attempt, sent
        try:
            remote = await self.client.submit(spec.endpoint, spec.body)
        except AmbiguousSubmit as exc:
            self.counts.ambiguous += 1
            log.warning("? submit of %s lost its answer (%s): looking for the job", spec.key, exc)
            if await self._reconcile(spec, state, sent, time.time()):
                return None
            return exc
        except TransientApiError as exc:
            await self._mark_lost(spec, state)
            return exc
        except PermanentApiError as exc:
            await self._mark_lost(spec, state)
            raise JobFailed(str(exc)) from exc
        except FatalApiError:
            await self._mark_lost(spec, state)
            raise
        except BaseException:
            # Cancelled mid-POST: the pending record stays, and the next run will look.
            raise
        received = time.time()
        await self._adopt(
            spec, state, remote.job_id, sent=sent, received=received, created=remote.created_at
        )
        self.gate.accepted()
        log.debug("→ submitted %s as %s", spec.key, remote.job_id)
        return None

    async def _mark_lost(self, spec: JobSpec, state: KeyState) -> None:
        await self.journal.append("lost", spec.key, a=state.attempts)
        state.pending_since = None

    async def _adopt(
        self,
        spec: JobSpec,
        state: KeyState,
        job_id: str,
        *,
        sent: float,
        received: float,
        created: float | None,
        adopted: bool = False,
    ) -> None:
        await self.journal.append(
            "submitted",
            spec.key,
            a=state.attempts,
            id=job_id,
            ts=sent,
            tr=received,
            c=created,
            adopted=adopted,
        )
        state.job_id, state.pending_since = job_id, None
        state.accepted += 1
        state.submitted_at = sent
        self.known_ids.add(job_id)
        self.counts.submits += 1
        self.committed_units += spec.units or 0.0
        if created is not None and not adopted:
            low, high = created - received, created - sent
            if self.skew is not None:
                low, high = max(low, self.skew[0]), min(high, self.skew[1])
            if low <= high:
                self.skew = (low, high)

    async def _reconcile(self, spec: JobSpec, state: KeyState, sent: float, ended: float) -> bool:
        """Find the job a lost POST created, if any. True: adopted; False: none, resend."""
        await anyio.sleep(self.options.reconcile_delay)
        low, high = self.skew if self.skew is not None else (-SKEW_MARGIN, SKEW_MARGIN)
        start, end = sent + low - 0.002, ended + high + 0.002  # created_at has ms precision
        try:
            candidates = [
                j
                for j in await self._jobs_created_between(start, end)
                if j.job_id not in self.known_ids
            ]
        except TransientApiError as exc:
            raise JobDeferred(
                f"could not check whether a lost submit created a job: {exc}"
            ) from exc
        if len(candidates) == 1:
            job = candidates[0]
            self.counts.adopted += 1
            log.warning("? found %s's job %s: adopted, not resubmitted", spec.key, job.job_id)
            await self._adopt(
                spec,
                state,
                job.job_id,
                sent=sent,
                received=ended,
                created=job.created_at,
                adopted=True,
            )
            return True
        if not candidates:
            self.counts.ambiguous_lost += 1
            log.warning("? %s's lost submit created no job: sending it again", spec.key)
            await self._mark_lost(spec, state)
            return False
        ids = [j.job_id for j in candidates]
        await self.journal.append("unresolved", spec.key, a=state.attempts, candidates=ids)
        self.known_ids.update(ids)
        state.pending_since, state.unresolved = None, True
        self.counts.unresolved += 1
        raise JobFailed(
            f"a submit's answer was lost and {len(ids)} remote jobs could be it "
            f"({', '.join(ids)}); not resubmitted, to avoid paying twice "
            "(--retry-failed submits it again)"
        )

    async def _jobs_created_between(self, start: float, end: float) -> list[RemoteJob]:
        found: list[RemoteJob] = []
        async for job in self._list_newest_first():
            created = job.created_at
            if created is None:
                continue
            if created < start:
                break
            if created <= end:
                found.append(job)
        return found

    async def _list_newest_first(self) -> AsyncIterator[RemoteJob]:
        cursor: str | None = None
        while True:
            page, cursor = await self._retrying(self.client.list_jobs, 100, cursor)
            for job in page:
                yield job
            if cursor is None or not page:
                return

    async def _retrying(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await call(*args)``, retried through transient errors with backoff."""
        for attempt in itertools.count():
            try:
                return await call(*args)
            except TransientApiError as exc:
                self.counts.transient_errors += 1
                if attempt >= self.options.max_transient:
                    raise
                delay = NETWORK.delay(attempt, exc.retry_after, self.rng)
                await anyio.sleep(delay * self.options.backoff_scale)
        raise AssertionError("unreachable")

    # ---- polling and downloading ---------------------------------------------------------------

    async def _poll(self, spec: JobSpec, state: KeyState) -> RemoteJob:
        """Poll every poll_interval (jittered) until the job ends or times out."""
        assert state.job_id is not None
        job_id = state.job_id
        try:
            return await self._poll_until_terminal(job_id)
        except (_CancelOnExit, anyio.get_cancelled_exc_class()) as exc:
            if self.options.cancel_on_exit:
                with anyio.CancelScope(shield=True):
                    await self._cancel_remote(job_id)
                    # Cancelled jobs are not billed: the next run submits this one afresh.
                    await self.journal.append(
                        "retry", spec.key, a=state.attempts, id=job_id, error="cancelled on exit"
                    )
                state.job_id = None
            if isinstance(exc, _CancelOnExit):
                raise _NotStarted from exc
            raise

    async def _poll_until_terminal(self, job_id: str) -> RemoteJob:
        deadline = time.monotonic() + self.settings.job_timeout
        status = "unknown"
        while True:
            await anyio.sleep(jittered(self.settings.poll_interval, rng=self.rng))
            if self.stopping and self.options.cancel_on_exit:
                raise _CancelOnExit
            try:
                remote = await self.client.get_job(job_id)
            except TransientApiError as exc:
                self.counts.transient_errors += 1
                if exc.retry_after or exc.status == 429:
                    delay = OVERLOAD.delay(0, exc.retry_after, self.rng)
                    await anyio.sleep(delay * self.options.backoff_scale)
                continue
            except PermanentApiError as exc:
                raise JobFailed(f"the remote job {job_id} is gone: {exc}") from exc
            if remote.status.terminal:
                return remote
            status = remote.status.value
            if time.monotonic() > deadline:
                await self._cancel_remote(job_id)
                raise JobFailed(
                    f"timed out after {self.settings.job_timeout:g} s "
                    f"(last status: {status}); cancelled"
                )

    async def _cancel_remote(self, job_id: str) -> None:
        with anyio.move_on_after(10, shield=True):
            try:
                await self.client.cancel(job_id)
            except (TransientApiError, PermanentApiError) as exc:
                log.info("could not cancel %s: %s", job_id, exc)

    async def _download_all(
        self, spec: JobSpec, state: KeyState, remote: RemoteJob
    ) -> list[dict[str, Any]]:
        if not remote.urls:
            raise JobFailed("the job completed without any result URL")
        files = []
        for index in range(len(remote.urls)):
            remote, entry = await self._download_one(spec, remote, index)
            files.append(entry)
        return files

    async def _download_one(
        self, spec: JobSpec, remote: RemoteJob, index: int
    ) -> tuple[RemoteJob, dict[str, Any]]:
        base = render_name(self._name_stem, spec)
        stem = base if index == 0 else f"{base}-{index}"
        partial = self.folder.partial_path(spec.key if index == 0 else f"{spec.key}-{index}")
        errors = 0
        while True:
            url = remote.urls[index]
            try:
                download = await self.client.download(url, partial)
                break
            except ExpiredUrl as exc:
                errors += 1
                if errors > self.options.max_transient:
                    raise JobDeferred(f"its image URLs keep expiring: {exc}") from exc
                log.info("↻ %s's image URL expired: fetching the job again", spec.key)
                remote = await self._retrying(self.client.get_job, remote.job_id)
                if len(remote.urls) <= index:
                    raise JobDeferred("the job no longer lists its images") from None
            except TransientApiError as exc:
                self.counts.transient_errors += 1
                errors += 1
                if errors > self.options.max_transient:
                    raise JobDeferred(f"download kept failing: {exc}") from exc
            await anyio.sleep(NETWORK.delay(errors, None, self.rng) * self.options.backoff_scale)
        name = stem + image_extension(download.content_type, url)
        final = await anyio.to_thread.run_sync(self.folder.place, partial, name)
        self.counts.downloads += 1
        self.counts.bytes += download.bytes
        entry = {
            "path": relative(final, self.folder.root),
            "sha256": download.sha256,
            "bytes": download.bytes,
        }
        return remote, entry

    # ---- stopping -------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Stop submitting; jobs in flight finish (within the drain timeout)."""
        if self.stopping is None:
            self.stopping = reason
            log.warning(
                "stopping (%s): no new submits; waiting up to %g s for jobs in flight",
                reason,
                self.options.drain_timeout,
            )

    def _stop_for_fatal(self, exc: FatalApiError) -> None:
        if self.fatal is None:
            self.fatal = exc
            log.error("%s: no more submits; jobs in flight will finish", exc)
        self.stop(f"fatal: {exc}")

    def abort(self) -> None:
        """Stop at once; the output folder resumes correctly on the next run."""
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def _watch_signals(self, helpers: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping is None:
                    self.interrupted = True
                    self.stop(f"interrupted by {signal.Signals(signum).name}")
                    helpers.start_soon(self._abort_after_drain)
                else:
                    log.warning("second signal: stopping now")
                    self.abort()
                    return

    async def _stop_at_deadline(self, helpers: TaskGroup, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.time()))
        if self.stopping is None:
            self.stop("deadline reached")
            helpers.start_soon(self._abort_after_drain)

    async def _abort_after_drain(self) -> None:
        await anyio.sleep(self.options.drain_timeout)
        log.warning("drain timeout reached: stopping now")
        self.abort()

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            self.on_progress(self)
            await anyio.sleep(0.5)

    def _result(self) -> RunResult:
        stopped = self.stopping
        if stopped is None and self.counts.over_budget:
            stopped = f"budget reached: {self.counts.over_budget} jobs not submitted"
        return RunResult(self.counts, stopped=stopped, fatal=self.fatal is not None)


class _NotStarted(Exception):
    """The run is stopping: this job was not submitted."""


class _CancelOnExit(Exception):
    """The run is stopping with --cancel-on-exit: cancel this job rather than wait for it."""


class _OverBudget(Exception):
    """Submitting this job could take the estimated spend over --budget."""
