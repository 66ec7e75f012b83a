"""``run_batch``: the Python entry point the ``krea-batch run`` command is a thin layer over."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio

from runner.api.bounds import Limits, Timeouts
from runner.api.client import DEFAULT_API_BASE, KreaClient
from runner.api.keys import ApiKey, KeyList
from runner.api.limiter import SharedRate
from runner.api.port import Api
from runner.api.server_clock import ServerClock
from runner.api.webhooks import (
    HookAddress,
    Receiver,
    WebhookSettings,
    folder_secret,
    receiving,
)
from runner.clock import Clock, SystemClock
from runner.engine import Engine, EngineOptions, RunResult, RunStats
from runner.engine.accounts import KeyRing
from runner.engine.deliveries import Deliveries
from runner.errors import UsageError
from runner.manifest import Manifest, load_manifest
from runner.outputs import OutputFolder, ResultRecord, arrow
from runner.outputs.card import dataset_card, write_card
from runner.outputs.destination import Destination, default_state_dir, destination_for
from runner.outputs.identity import (
    FolderIdentity,
    api_identity,
    claim_identity,
    manifest_id_of,
)
from runner.outputs.layout import IDENTITY_NAME, RESULTS_NAME
from runner.outputs.live import LiveStatus
from runner.outputs.metadata import metadata_rows
from runner.outputs.report import write_report
from runner.outputs.summary import summary
from runner.outputs.writers import claim_format, open_writer
from runner.sharding import check_share
from runner.state.figures import stats_of
from runner.state.journal import records_at
from runner.state.ledger import folder_counts

log = logging.getLogger(__name__)
T = TypeVar("T")
# Serves a webhook receiver for the run's block; gives where submits ask for reports.
Listen = Callable[[WebhookSettings, Receiver], contextlib.AbstractAsyncContextManager[HookAddress]]


async def run_batch(
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    api_base: str | None = None,
    token: str | None = None,
    tokens: Sequence[str] = (),
    key_source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    options: EngineOptions | None = None,
    on_progress: Callable[[Engine], None] | None = None,
    notify_url: str | None = None,
    metrics_file: str | Path | None = None,
    webhook: WebhookSettings | None = None,
    state_dir: str | Path | None = None,
    append: bool = False,
    connect: Callable[[ApiKey, ServerClock], Api] | None = None,
    clock: Clock | None = None,
    listen: Listen = receiving,
) -> RunResult:
    """Run every job of ``manifest`` into the folder ``out``; safe to call again to resume.

    ``out`` may be an fsspec URL (``s3://bucket/prefix``): the run then works in a local
    ``state_dir`` (by default one per URL under ~/.local/state/krea-batch) and puts each file
    there whole once it is final (runner.outputs.destination).

    ``api_base`` is Krea's API by default, or anything that answers like it (the emulator,
    which the CLI starts for ``--emulator``); a token is needed unless ``api_base`` is given.
    ``tokens``: a pool of keys, each an account with the run's concurrency and request rate
    (runner.engine.accounts), opened when first used; ``token`` is a pool of one.
    ``key_source`` says where they come from, so that messages name a key the way a person
    finds it: ``key 2 of keys.txt (35a34ba4)``.

    ``overrides`` are run settings (concurrency, rate_limit, …) that beat the manifest's;
    ``notify_url`` receives the summary as JSON when the run ends; OUT/status.json (and
    ``metrics_file``, in Prometheus text format) tell how the run goes while it runs.
    With ``webhook``, submits ask the API to report each job's end to a receiver this run
    serves, and polling becomes a slow safety net.

    A folder keeps one dataset: a run against another API, of another shard, or of another
    manifest is refused (``append``: this manifest's jobs join the folder's on purpose).

    ``connect`` gives each key's API (told the server's clock) in place of a ``KreaClient`` of
    ``api_base``: tests run in-process through it, on ``clock``, and take webhooks through
    ``listen`` (a receiver served in-process rather than on the listen address).
    """
    keys = list(tokens) or ([token] if token else [])
    if not keys and api_base is None:  # before the folder is made: nothing is left behind
        raise UsageError(
            "no API token: set KREA_API_TOKEN or pass --token-file FILE (create a token in your "
            "Krea account under Settings → API), or try it without one: --emulator"
        )
    base_url = api_base or DEFAULT_API_BASE
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, overrides=overrides)
    options = options or EngineOptions()
    if options.shard is not None:  # shards share the account: each takes its part of it
        manifest, options = shard_share(manifest, options, options.shard[1])
    settings = manifest.settings
    if settings.format == "parquet":
        arrow.parquet()  # before the folder is made
    destination = destination_for(str(out))
    await anyio.to_thread.run_sync(destination.check)  # before the folder is made
    if state_dir is not None:
        root = Path(state_dir)
    else:
        root = default_state_dir(str(out)) if destination.remote else Path(out)
    folder = OutputFolder(root)
    clock = clock or SystemClock()
    started = clock.time()
    with folder:
        if destination.remote and not folder.journal_path.exists():
            # Another machine's run, or a lost state folder: what the destination holds is
            # read from its results and shard listing, and never paid for again.
            for name in (RESULTS_NAME, IDENTITY_NAME):
                await anyio.to_thread.run_sync(destination.fetch, name, folder.root / name)
        claim_format(folder, settings.format)
        wanted = FolderIdentity(
            settings.format,
            api_identity(base_url),
            (manifest_id_of(manifest.file),),
            shard=options.shard,
        )
        claim_identity(folder.root, wanted, str(out), append=append)
        writer = open_writer(
            folder, settings.format, settings.shard_size, destination, manifest.var_names
        )

        timeouts = Timeouts(api=options.api_timeout, stall=options.download_stall)
        server_clock = ServerClock()
        async with contextlib.AsyncExitStack() as stack:

            def client_for(key: ApiKey) -> Api:
                if connect is not None:
                    return connect(key, server_clock)
                client = KreaClient(
                    base_url,
                    key.token,
                    limiter=SharedRate(settings.rate_limit),
                    timeouts=timeouts,
                    limits=Limits(image_bytes=settings.max_image_bytes),
                    max_connections=max(16, settings.concurrency * 2),
                    server_clock=server_clock,
                )
                client.open()
                stack.push_async_callback(client.close)
                return client

            ring = KeyRing(KeyList(keys or ["anonymous"], key_source), client_for)
            deliveries = Deliveries()
            receiver = None
            if webhook is not None:  # the folder's secret: a resumed run takes its deliveries
                receiver = Receiver(deliver=deliveries.deliver, secret=folder_secret(folder.state))
                hook = await stack.enter_async_context(listen(webhook, receiver))
                options = dataclasses.replace(options, webhook=hook)
            metrics = Path(metrics_file) if metrics_file else None
            live = LiveStatus(folder.root, metrics, api_base=base_url)

            def progress(engine: Engine) -> None:
                live(engine)
                if on_progress is not None:
                    on_progress(engine)

            engine = Engine(
                manifest,
                folder,
                ring,
                options,
                on_progress=progress,
                writer=writer,
                deliveries=deliveries,
                server_clock=server_clock,
                clock=clock,
            )
            result = await engine.run()
            live.write(engine, "finished")
            clients = list(ring.opened)

        def records() -> Iterator[ResultRecord]:
            # Every finished job of the folder: this manifest's in its order, then any other's
            # (an --append, an edited manifest), since the card counts them all.
            states = engine.states
            ours = [states[key].done_at for key in engine.keys if key in states]
            mine = set(engine.keys)
            others = sorted(
                s.done_at for k, s in states.items() if k not in mine and s.done_at is not None
            )
            offsets = [o for o in ours if o is not None] + others
            return records_at(folder.journal_path, offsets)

        # Each file of the finishing stage is written on its own: one that cannot be (a full
        # disk, an image that will not open) is a warning, never the loss of the run.
        # results.jsonl is the writer's, already written as jobs finished.
        states = engine.states
        written = sum(1 for key in engine.keys if key in states and states[key].done_at is not None)
        loose = settings.format == "files"  # shards hold their images: no imagefolder, gallery
        current = not loose or _up_to_date(folder, result.counts.finished_now)
        if not current:
            _best_effort(
                folder.layout.metadata,
                lambda: folder.write_metadata(
                    metadata_rows(folder.root, records(), writer.var_names)
                ),
                default=None,
            )
        requests = sum((client.requests_by for client in clients), Counter[str]())
        stats = stats_of(result.counts, started, clock.time(), requests=requests)
        result.summary = _summary(manifest, str(out), result, base_url, stats, written)
        held = folder_counts(engine.ledger)
        result.summary["folder"] = {  # the whole folder, over every run (status says the same)
            "jobs": held.total,
            "completed": held.completed,
            "failed": held.failed,
            "ambiguous": held.ambiguous_jobs,
        }
        listing = engine.listing_stats()
        if listing is not None:
            result.summary["listing"] = dataclasses.asdict(listing)
        if receiver is not None:
            result.summary["webhooks"] = receiver.counts.to_json()
        _best_effort(
            folder.summary_path, lambda: folder.write_summary(result.summary), default=None
        )
        if result.counts.finished_now or not folder.layout.card.exists():
            completed = held.completed
            models = sorted(result.counts.by_model)
            card = dataset_card(
                settings.format, completed, models, result.summary, var_names=writer.var_names
            )
            _best_effort(
                folder.layout.card, lambda: write_card(folder.layout.card, card), default=None
            )
        if not current:
            _best_effort(
                folder.layout.report,
                lambda: write_report(folder.root, records(), result.summary),
                default=None,
            )
        if destination.remote:
            failed = await anyio.to_thread.run_sync(
                _publish, folder, destination, settings.format, result.counts.finished_now
            )
            if failed:  # the run is not whole at --out: not a success
                missing = (
                    f"{', '.join(failed)} not yet at {destination.url}: the next run puts them"
                )
                result.stopped = f"{result.stopped}; {missing}" if result.stopped else missing
    if notify_url:
        await notify(notify_url, result.summary)
    return result


def shard_share(
    manifest: Manifest, options: EngineOptions, shards: int
) -> tuple[Manifest, EngineOptions]:
    """One shard's part of what the shards share: the account's jobs at once, its request
    rate and the budget, divided evenly (each shard runs on its own, with no coordinator).
    A split into more shards than the account runs jobs at once is refused."""
    settings = manifest.settings
    check_share(shards, settings.concurrency)
    concurrency = max(1, settings.concurrency // shards)
    share = dataclasses.replace(
        settings,
        concurrency=concurrency,
        submit_concurrency=min(settings.submit_concurrency, concurrency),
        rate_limit=settings.rate_limit / shards,
    )
    budget = None if options.budget is None else options.budget / shards
    return (
        dataclasses.replace(manifest, settings=share),
        dataclasses.replace(options, budget=budget),
    )


def _publish(
    folder: OutputFolder, destination: Destination, format: str, finished: int
) -> list[str]:
    """Put the run's own files at a remote destination, whole; returns the names of those it
    could not put. A run that finished nothing puts nothing there that is there already,
    unless an earlier run could not put them all (a mark in the state folder says so)."""
    layout = folder.layout
    files = [layout.results, layout.summary, layout.card, layout.identity]
    if format == "files":
        files.append(layout.metadata)
    unfinished = folder.state / "unpublished"
    everything = bool(finished) or unfinished.exists()
    try:
        held = destination.listing("") if not everything else set()
    except OSError as exc:
        log.warning(
            "could not list %s: %s; the next run puts its files there", destination.url, exc
        )
        return [path.name for path in files if path.exists()]
    unfinished.touch()
    failed = []
    for path in files:
        if path.exists() and (everything or path.name not in held):
            try:
                destination.put(path, path.name)
            except OSError as exc:
                log.warning("could not put %s at %s: %s", path.name, destination.url, exc)
                failed.append(path.name)
    if not failed:
        unfinished.unlink(missing_ok=True)
    return failed


def _up_to_date(folder: OutputFolder, finished_now: int) -> bool:
    """Whether metadata.jsonl and report.html already say all there is: this
    run finished nothing, and they were written after the journal's last event (a run that
    stopped before its finishing stage leaves the journal newer)."""
    files = (folder.layout.metadata, folder.layout.report)
    if finished_now or not all(path.exists() for path in files):
        return False
    journal = folder.journal_path.stat().st_mtime_ns if folder.journal_path.exists() else 0
    return all(path.stat().st_mtime_ns >= journal for path in files)


def _best_effort(path: Path, write: Callable[[], T], default: T) -> T:
    try:
        return write()
    except Exception as exc:  # the jobs' outcomes are safe in the journal whatever this says
        log.warning("could not write %s: %s; the next run writes it again", path, exc)
        return default


async def notify(url: str, summary: Mapping[str, Any]) -> None:
    """POST the summary to ``url``; a failure is logged, never fatal (the run is over)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
            session.post(url, json=summary) as response,
        ):
            if response.status >= 300:
                log.warning("notify %s answered %d", url, response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not notify %s: %s", url, exc)


def _summary(
    manifest: Manifest,
    out: str,
    result: RunResult,
    api_base: str,
    stats: RunStats,
    records: int,
) -> dict[str, Any]:
    settings = manifest.settings
    return summary(
        out=out,
        stats=stats,
        records=records,
        exit_code=result.exit_code,
        stopped=result.stopped,
        manifest=manifest.file,
        api_base=api_base,
        settings={
            "concurrency": settings.concurrency,
            "submit_concurrency": settings.submit_concurrency,
            "rate_limit_per_s": settings.rate_limit,
            "poll_interval_s": settings.poll_interval,
            "poll_mode": settings.poll_mode,
            "max_attempts": settings.max_attempts,
            "job_timeout_s": settings.job_timeout,
        },
    )
