"""Coordinators: what the processes of a split share (runner.engine.coordinator says what).

``open_coordinator(URL)`` opens the one there is, over Redis: ``redis://[:password@]host
[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path/redis.sock``. It needs the ``redis``
package (``pip install '.[redis]'`` in a clone), and is a usage error without it or when the
server does not answer at start: nothing of the run is made then.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from runner.clock import Clock
from runner.errors import UsageError

if TYPE_CHECKING:
    from runner.coordination.redis import RedisCoordinator

COORDINATOR_VARIABLE = "KREA_BATCH_COORDINATOR"  # --coordinator's value when not given
SCHEMES = ("redis", "rediss", "unix")


def shown(url: str) -> str:
    """The URL as messages show it: without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


@contextlib.asynccontextmanager
async def open_coordinator(
    url: str, clock: Clock, **settings: Any
) -> AsyncIterator[RedisCoordinator]:
    """The coordinator at ``url`` for a run, its leases given back when the block ends."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise UsageError(
            f"--coordinator {shown(url)!r}: give a Redis URL, redis://HOST:6379 (or rediss://, "
            "unix:///path/redis.sock)"
        )
    try:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        from runner.coordination.redis import RedisCoordinator
    except ImportError as exc:
        raise UsageError(
            f"--coordinator needs the redis package ({exc}): pip install '.[redis]' in a clone "
            "of krea-batch (or pip install 'redis>=5.0.1' beside it)"
        ) from exc
    try:
        client = Redis.from_url(
            url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0
        )
    except ValueError as exc:
        raise UsageError(f"--coordinator {shown(url)!r}: {exc}") from exc
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            raise UsageError(
                f"--coordinator {shown(url)}: Redis does not answer ({exc}); nothing was sent"
            ) from exc
        coordinator = RedisCoordinator(client, clock, **settings)
        try:
            yield coordinator
        finally:
            with anyio.CancelScope(shield=True), clock.move_on_after(5.0):
                await coordinator.close()
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
