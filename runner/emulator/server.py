"""Starting the emulator: in-process for tests and `run --emulator`, or as `krea-batch serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from runner.emulator.app import Emulator
from runner.emulator.config import EmulatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started emulator: its base URL and the object behind it (for stats and knobs)."""

    url: str
    emulator: Emulator


@contextlib.asynccontextmanager
async def run_emulator(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[RunningEmulator]:
    """Serve an emulator until the block ends; port 0 picks a free port."""
    emulator = Emulator(config, clock=clock)
    runner = web.AppRunner(emulator.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield RunningEmulator(f"http://{bound_host}:{bound_port}", emulator)
    finally:
        await runner.cleanup()


async def serve_forever(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (the `krea-batch serve` command)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_emulator(config, host=host, port=port) as running:
        accounts = len(config.accepted_tokens)
        log.info(
            "Krea emulator listening on %s (%s)",
            running.url,
            f"{accounts} account(s), one per accepted token" if accounts else "any bearer token",
        )
        await stop.wait()
        log.info(
            "stopping; stats: %s",
            {k: v for k, v in running.emulator.snapshot().items() if k != "submits_by_body"},
        )
