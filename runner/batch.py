"""``run_batch``: the Python entry point the ``krea-batch run`` command is a thin layer over."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from runner.engine import Engine, EngineOptions, RunResult
from runner.engine.accounts import KeyRing
from runner.engine.budget import Budget
from runner.engine.coordinator import Coordinator, run_name
from runner.engine.deliveries import Deliveries
from runner.errors import UsageError
from runner.finishing import Finishing, Ran
from runner.manifest import Manifest, load_manifest
from runner.outputs import OutputFolder, arrow
from runner.outputs.destination import Destination, default_state_dir, destination_for, is_url
from runner.outputs.identity import (
    FolderIdentity,
    api_identity,
    claim_identity,
    manifest_id_of,
)
from runner.outputs.layout import IDENTITY_NAME, RESULTS_NAME
from runner.outputs.live import LiveStatus
from runner.outputs.writers import Writer, claim_format, open_writer
from runner.sharding import check_share

log = logging.getLogger(__name__)
# Serves a webhook receiver for the run's block; gives where submits ask for reports.
Listen = Callable[[WebhookSettings, Receiver], contextlib.AbstractAsyncContextManager[HookAddress]]
T = TypeVar("T")


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
    coordinator: str | Coordinator | None = None,
    listen: Listen = receiving,
) -> RunResult:
    """Run every job of ``manifest`` into ``out`` (a folder, or an fsspec URL worked on in a
    local ``state_dir``); safe to call again to resume. ``api_base``: Krea's API by default,
    or anything that answers like it; ``tokens`` (or ``token``): a pool of keys. ``connect``
    gives each key's API instead (tests run in-process, on ``clock``); ``coordinator`` (a
    Redis URL) shares the account among a split's processes; ``listen`` serves the webhook
    receiver (tests: in-process). docs/running.md tells the rest.
    """
    keys = list(tokens) or ([token] if token else [])
    if not keys and api_base is None:  # before the folder is made: nothing is left behind
        raise UsageError(
            "no API token: set KREA_API_TOKEN or pass --token-file FILE (create a token in your "
            "Krea account under Settings → API), or try it without one: --emulator"
        )
    base_url = api_base or DEFAULT_API_BASE
    options = options or EngineOptions()
    manifest, options = _prepared(manifest, overrides, options, coordinator is not None)
    destination = destination_for(str(out))
    await anyio.to_thread.run_sync(destination.check)  # before the folder is made
    folder = OutputFolder(_local_root(str(out), destination, state_dir))
    clock = clock or SystemClock()
    started = clock.time()
    wiring = Wiring(base_url, keys, key_source, connect, clock, webhook, metrics_file, listen)
    async with coordinated(coordinator, clock) as joined, contextlib.AsyncExitStack() as stack:
        stack.enter_context(folder)
        writer = await _claim(folder, destination, manifest, options, base_url, str(out), append)
        if joined is not None:
            budget = shared_budget(joined, manifest, options, out)
            wiring = dataclasses.replace(wiring, coordinator=joined, budget=budget)
        ran = await _run_engine(manifest, folder, writer, options, wiring, on_progress)
        finishing = Finishing(folder, writer, destination, manifest, str(out), base_url)
        result = await finishing.finish(ran, started, clock.time())
    if notify_url:
        await notify(notify_url, result.summary)
    return result


def _prepared(
    manifest: str | Path | Manifest,
    overrides: Mapping[str, Any] | None,
    options: EngineOptions,
    coordinated: bool,
) -> tuple[Manifest, EngineOptions]:
    """The manifest loaded and, for a shard without a coordinator, its part of the account
    (all checked before the folder is made: a refused run leaves nothing behind)."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, overrides=overrides)
    if options.shard is not None and not coordinated:
        # Shards share the account with nothing to tell them apart: each takes its part of it.
        manifest, options = shard_share(manifest, options, options.shard[1])
    if manifest.settings.format == "parquet":
        arrow.parquet()
    return manifest, options


def _local_root(out: str, destination: Destination, state_dir: str | Path | None) -> Path:
    """Where the run keeps its folder: ``out`` itself, or a local state folder for a URL."""
    if state_dir is not None:
        return Path(state_dir)
    return default_state_dir(out) if destination.remote else Path(out)


async def _claim(
    folder: OutputFolder,
    destination: Destination,
    manifest: Manifest,
    options: EngineOptions,
    base_url: str,
    out: str,
    append: bool,
) -> Writer:
    """Make the folder this run's: its format and identity (a remote destination's read
    first, when this machine has no state for it); the writer of its format."""
    if destination.remote and not folder.journal_path.exists():
        # Another machine's run, or a lost state folder: what the destination holds is
        # read from its results and shard listing, and never paid for again.
        for name in (RESULTS_NAME, IDENTITY_NAME):
            await anyio.to_thread.run_sync(destination.fetch, name, folder.root / name)
    claim_format(folder, manifest.settings.format)
    wanted = FolderIdentity(
        manifest.settings.format,
        api_identity(base_url),
        (manifest_id_of(manifest.file),),
        shard=options.shard,
    )
    claim_identity(folder.root, wanted, out, append=append)
    settings = manifest.settings
    return open_writer(
        folder, settings.format, settings.shard_size, destination, manifest.var_names
    )


@dataclasses.dataclass(frozen=True)
class Wiring:
    """How a run reaches the API and reports as it goes."""

    base_url: str
    keys: list[str]
    key_source: str | None
    connect: Callable[[ApiKey, ServerClock], Api] | None
    clock: Clock
    webhook: WebhookSettings | None
    metrics_file: str | Path | None
    listen: Listen = receiving  # serves the webhook receiver (tests: in-process)
    coordinator: Coordinator | None = None
    budget: Budget | None = None  # one over every process of the split (a coordinator's)


async def _run_engine(
    manifest: Manifest,
    folder: OutputFolder,
    writer: Writer,
    options: EngineOptions,
    wiring: Wiring,
    on_progress: Callable[[Engine], None] | None,
) -> Ran:
    """Run the engine with a client per key in use (closed when it ends), the webhook
    receiver and the live status file."""
    server_clock = ServerClock()
    async with contextlib.AsyncExitStack() as stack:
        client_for = _connector(manifest, options, wiring, server_clock, stack)
        ring = KeyRing(KeyList(wiring.keys or ["anonymous"], wiring.key_source), client_for)
        deliveries = Deliveries()
        receiver = None
        if wiring.webhook is not None:
            # The folder's secret: a resumed run takes its killed predecessor's deliveries.
            receiver = Receiver(deliver=deliveries.deliver, secret=folder_secret(folder.state))
            hook = await stack.enter_async_context(wiring.listen(wiring.webhook, receiver))
            options = dataclasses.replace(options, webhook=hook)
        metrics = Path(wiring.metrics_file) if wiring.metrics_file else None
        live = LiveStatus(folder.root, metrics, api_base=wiring.base_url)

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
            clock=wiring.clock,
            coordinator=wiring.coordinator,
            budget=wiring.budget,
        )
        result = await engine.run()
        live.write(engine, "finished")
        return Ran(engine, result, list(ring.opened), receiver)


def _connector(
    manifest: Manifest,
    options: EngineOptions,
    wiring: Wiring,
    server_clock: ServerClock,
    stack: contextlib.AsyncExitStack,
) -> Callable[[ApiKey], Api]:
    """How a key in use gets its API: ``wiring.connect``'s, or a client of the base URL that
    ``stack`` closes."""
    settings = manifest.settings
    timeouts = Timeouts(api=options.api_timeout, stall=options.download_stall)

    def client_for(key: ApiKey) -> Api:
        if wiring.connect is not None:
            return wiring.connect(key, server_clock)
        client = KreaClient(
            wiring.base_url,
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

    return client_for


@contextlib.asynccontextmanager
async def coordinated(
    coordinator: str | Coordinator | None, clock: Clock
) -> AsyncIterator[Coordinator | None]:
    """The run's coordinator: opened from its URL for the block (a UsageError when it cannot
    be), or as given."""
    if not isinstance(coordinator, str):
        yield coordinator
        return
    from runner.coordination import open_coordinator

    async with open_coordinator(coordinator, clock) as opened:
        yield opened


def shared_budget(
    coordinator: Coordinator, manifest: Manifest, options: EngineOptions, out: str | Path
) -> Budget:
    """The run's budget over every process of its split: one ledger per manifest, split and
    unit, in which each job counts once per output folder."""
    shards = options.shard[1] if options.shard is not None else None
    run = run_name(manifest_id_of(manifest.file), shards, options.budget_unit)
    folder = str(out) if is_url(str(out)) else str(Path(out).resolve())
    return coordinator.budget(run, folder, options.budget, options.budget_unit)


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
