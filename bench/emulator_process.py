"""Start `krea-batch serve` in a child process for a benchmark, and wait until it answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url + "/_emulator/stats"):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the emulator did not start")


def paid_jobs(url: str) -> int:
    """The jobs the emulator has billed so far (completed at the server, in every account):
    what a run costs, unlike its submits, some of which end cancelled or failed."""

    async def read() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/_emulator/stats") as response,
        ):
            data = await response.json()
        return int(data.get("paid", 0))

    return asyncio.run(read())


@contextlib.contextmanager
def emulator_process(*flags: str) -> Iterator[str]:
    """Serve an emulator with these `serve` flags in a child process; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(wait_until_up(url))
        yield url
    finally:
        server.terminate()
        server.wait(10)
