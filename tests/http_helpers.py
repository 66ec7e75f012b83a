"""A small HTTP receiver for tests of things the runner or emulator POST (webhooks, notify)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 1


@contextlib.asynccontextmanager
async def receiver(expected: int = 1) -> AsyncIterator[Receiver]:
    """Serve POST /hook on a free port; ``arrived`` is set once ``expected`` bodies came."""
    app = web.Application()
    runner = web.AppRunner(app)
    state = Receiver(url="", expected=expected)

    async def hook(request: web.Request) -> web.Response:
        state.bodies.append(await request.json())
        if len(state.bodies) >= state.expected:
            state.arrived.set()
        return web.Response()

    app.router.add_post("/hook", hook)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def fake_server(routes: dict[tuple[str, str], Route]) -> AsyncIterator[str]:
    """Serve ``{(method, path): handler}`` on a free port; yields the base URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
