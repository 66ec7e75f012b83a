"""Helpers for talking to an in-process emulator over a real socket, with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from runner.catalog import Model
from runner.emulator import Emulator, EmulatorConfig, Latency, run_emulator
from runner.emulator.server import RunningEmulator

FLUX = "/generate/image/bfl/flux-1-dev"


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    url: str
    emulator: Emulator
    session: aiohttp.ClientSession
    clock: FakeClock

    async def submit(self, body: dict[str, Any], endpoint: str = FLUX) -> aiohttp.ClientResponse:
        return await self.session.post(self.url + endpoint, json=body)

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/jobs/{job_id}") as response:
            assert response.status == 200, await response.text()
            data: dict[str, Any] = await response.json()
            return data

    async def submit_ok(self, body: dict[str, Any], endpoint: str = FLUX) -> dict[str, Any]:
        async with await self.submit(body, endpoint) as response:
            assert response.status == 200, await response.text()
            data: dict[str, Any] = await response.json()
            return data


@contextlib.asynccontextmanager
async def harness(client_token: str = "test-token", **knobs: Any) -> AsyncIterator[Harness]:
    knobs.setdefault("latency", Latency.parse("fixed:10"))
    clock = FakeClock()
    config = EmulatorConfig(**knobs)
    async with (
        run_emulator(config, clock=clock) as running,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {client_token}"}) as session,
    ):
        yield Harness(running.url, running.emulator, session, clock)


def minimal_body(model: Model) -> dict[str, Any]:
    """The smallest valid request body for a model: its required fields, filled in."""
    samples: dict[str, Any] = {
        "prompt": "a lighthouse in a storm",
        "width": 1024,
        "height": 1024,
        "aspect_ratio": "1:1",
        "resolution": "1K",
        "image_url": "https://example.com/a.png",
        "reference_images": [{"url": "https://example.com/a.png", "tag": "subject"}],
    }
    return {name: samples[name] for name in model.schema.get("required", [])}


@contextlib.contextmanager
def emulator_thread(config: EmulatorConfig) -> Iterator[RunningEmulator]:
    """An emulator served from a thread of its own, so that the CLI runs in the main thread
    (it handles signals there)."""
    started: queue.Queue[tuple[RunningEmulator, asyncio.AbstractEventLoop, asyncio.Event]]
    started = queue.Queue()

    async def serve() -> None:
        done = asyncio.Event()
        async with run_emulator(config) as emu:
            started.put((emu, asyncio.get_running_loop(), done))
            await done.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    emu, loop, done = started.get(timeout=10)
    try:
        yield emu
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join()
