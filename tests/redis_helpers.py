"""Debian's redis-server for the tests, and coordinators over it on a test's virtual clock."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from runner.coordination.redis import RedisCoordinator
from tests.virtual_time import VirtualClock


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A redis-server of its own on a free port, no persistence: its URL and its process,
    once it says it accepts connections."""
    program = shutil.which("redis-server")
    if program is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    for _ in range(5):  # a port found free may be taken before the server binds it
        port = _free_port()
        options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        words = [word for name, value in options.items() for word in (f"--{name}", value)]
        server = subprocess.Popen(
            [program, *words, "--dir", str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert server.stdout is not None
        said = []
        for line in server.stdout:  # until it is ready, or it exits
            said.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            server.wait()
            if "Address already in use" in "".join(said):
                continue
            pytest.fail("redis-server did not start:\n" + "".join(said))
        drain = threading.Thread(target=server.stdout.read, daemon=True)  # a full pipe blocks it
        drain.start()
        try:
            yield f"redis://127.0.0.1:{port}/0", server
        finally:
            server.kill()
            server.wait()
            drain.join()
            server.stdout.close()
        return
    pytest.fail("redis-server found no free port")


def held_redis(url: str, clock: VirtualClock) -> Redis:
    """A client whose calls hold the virtual clock until Redis answers them (virtual time
    would otherwise run on while a task waits on the socket)."""

    class Held(Redis):
        async def execute_command(self, *args: Any, **options: Any) -> Any:
            with clock.outside_call():
                return await super().execute_command(*args, **options)

    return Held.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)


@contextlib.asynccontextmanager
async def coordinator_at(
    url: str, clock: VirtualClock, **settings: Any
) -> AsyncIterator[RedisCoordinator]:
    """A coordinator (a process of a run, as Redis sees it) on the virtual clock."""
    client = held_redis(url, clock)
    coordinator = RedisCoordinator(client, clock, **settings)
    try:
        yield coordinator
    finally:
        await coordinator.close()
        await client.aclose()
