"""Image downloads: streamed to a hidden file, bounded in size and in stalls, redirects
checked hop by hop, fsynced; never with the API token (result URLs are pre-signed CDN URLs)."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import aiohttp
import anyio
from yarl import URL

from runner.api.addresses import PrivateAddress, is_private
from runner.api.bounds import STALL_BYTES, Limits, Timeouts
from runner.errors import DiskError, ExpiredUrl, PermanentApiError, TransientApiError


@dataclass(frozen=True, slots=True)
class Download:
    """An image fetched by ``download``: its bytes in memory (``data``) or, past SPILL bytes,
    in the file at ``path``; its length, sha256 and declared type."""

    path: Path
    bytes: int
    sha256: str
    content_type: str
    data: builtins.bytes | None = None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    api_host: str | None,
    limits: Limits,
    timeouts: Timeouts,
    now: Callable[[], float],
) -> Download:
    """Fetch ``url``: bytes, checked for size and stalls, and nothing more (what they hold and
    where they go is the output writer's business). A large image is streamed into ``dest``
    (fsynced) rather than held. ``now``: the monotonic clock stalls are measured on."""
    stall = timeouts.stall
    timeout = aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_read=stall)
    try:
        async with _follow(session, url, timeout, api_host) as response:
            if response.status in (401, 403, 404, 410):
                raise ExpiredUrl(
                    f"GET image: {response.status} (the URL expired or is gone)",
                    status=response.status,
                )
            if response.status != 200:
                raise TransientApiError(f"GET image: {response.status}", status=response.status)
            return await _receive(response, dest, limits.image_bytes, stall, now)
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, PrivateAddress):
            raise PermanentApiError(f"GET image: {exc.os_error}") from exc
        raise TransientApiError(f"GET image: cannot connect ({exc.os_error})") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise TransientApiError("GET image: cannot connect (timed out)") from exc
    except TimeoutError as exc:
        raise TransientApiError(f"GET image: stalled (nothing for {stall:g} s)") from exc
    except aiohttp.ClientError as exc:
        raise TransientApiError(f"GET image: download cut short ({type(exc).__name__})") from exc
    except ValueError as exc:  # a URL no library can use (a host label over 63 characters)
        raise PermanentApiError(f"GET image: unusable URL ({exc})") from exc
    except OSError as exc:  # writing the file, not the network: ours to stop for
        raise DiskError(str(dest.parent), exc) from exc


async def _receive(
    response: aiohttp.ClientResponse,
    dest: Path,
    cap: int,
    stall: float,
    now: Callable[[], float],
) -> Download:
    """The body of a 200, bounded by ``cap`` bytes and by stalls of ``stall`` seconds."""
    # Asked for none, a server may still encode the body: aiohttp decodes it, and the
    # declared length is then the encoded one. The cap applies to decoded bytes.
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    expected = None if encoding not in ("", "identity") else response.content_length
    if expected is not None and expected > cap:
        raise PermanentApiError(
            f"GET image: declares {expected:,} bytes, above the limit of {cap:,} "
            "(--max-image-bytes)"
        )
    digest = hashlib.sha256()
    size = 0
    with _SpoolFile(dest) as out:
        since, recent = now(), 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
            recent += len(chunk)
            if now() - since >= stall:
                if recent < STALL_BYTES:
                    raise TransientApiError(f"GET image: stalled ({recent} bytes in {stall:g} s)")
                since, recent = now(), 0
            if size > cap:
                raise PermanentApiError(
                    f"GET image: went on past the limit of {cap:,} bytes (--max-image-bytes)"
                )
            await out.write(chunk)
        if expected is not None and size != expected:
            raise TransientApiError(f"GET image: got {size} of {expected} bytes")
        if size == 0:
            raise TransientApiError("GET image: empty file")
        data = await out.commit()
    content_type = response.headers.get("Content-Type", "")
    return Download(dest, size, digest.hexdigest(), content_type, data)


@contextlib.asynccontextmanager
async def _follow(
    session: aiohttp.ClientSession,
    url: str,
    client_timeout: aiohttp.ClientTimeout,
    api_host: str | None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following redirects by hand so that each hop is checked: http(s)
    only, and no private address unless the API itself is at one."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise PermanentApiError(f"GET image: {parts.scheme or 'no'} scheme; http(s) only")
        if is_private(parts.hostname) and not is_private(api_host):
            raise PermanentApiError(f"GET image: {parts.hostname} is a private address")
        async with session.get(
            url,
            timeout=client_timeout,
            allow_redirects=False,
            headers={"Accept-Encoding": "identity"},
        ) as response:
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                yield response
                return
            url = str(response.url.join(URL(location)))
    raise PermanentApiError(f"GET image: more than {MAX_REDIRECTS} redirects")


MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _SpoolFile:
    """A body kept in memory up to ``SPILL`` bytes (an image of a few MB is handed over as
    bytes, with no file and no thread hop); past that, written to the file in worker-thread
    calls (write, then flush and fsync at the end), so memory stays bounded."""

    SPILL = 8 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._chunks: list[bytes] = []
        self._waiting = 0
        self._handle: BinaryIO | None = None

    def __enter__(self) -> _SpoolFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self._handle is not None:
            self._handle.close()
        if kind is not None:
            self.path.unlink(missing_ok=True)  # nothing half-written stays behind

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._waiting += len(chunk)
        if self._waiting >= self.SPILL:
            await anyio.to_thread.run_sync(self._drain, False)

    async def commit(self) -> bytes | None:
        """The whole body if it never spilled (no file, no thread hop); else everything on
        disk, fsynced, closed, and None."""
        if self._handle is None:
            data, self._chunks = b"".join(self._chunks), []
            return data
        await anyio.to_thread.run_sync(self._finish)
        return None

    def _drain(self, sync: bool) -> None:
        if self._handle is None:
            self._handle = self.path.open("wb")
        self._handle.write(b"".join(self._chunks))
        self._chunks, self._waiting = [], 0
        if sync:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def _finish(self) -> None:
        self._drain(True)
        assert self._handle is not None
        self._handle.close()
        self._handle = None
