"""The Krea API client: one aiohttp session, paced requests, and errors translated once.

Every aiohttp exception and HTTP status becomes one of ``runner.errors``:

    cannot connect, DNS, connect timeout   TransientApiError: nothing reached the server
    2xx with unreadable JSON               TransientApiError (AmbiguousSubmit(created) for a POST)
    401, 402                               FatalApiError: stop submitting
    429                                    TransientApiError(retry_after, overload for concurrency)
    400, 404, 410, other 4xx               PermanentApiError with the server's message
    5xx, timeouts and resets once sent     TransientApiError (AmbiguousSubmit for a POST)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
from yarl import URL

from runner import __version__, jsontext
from runner.api.addresses import PrivateAddress, is_private, resolver_for
from runner.api.limiter import SharedRate
from runner.api.remote import ListedJob, MalformedJob, RemoteJob
from runner.api.skew import http_date
from runner.errors import (
    AmbiguousSubmit,
    ApiError,
    DiskError,
    ExpiredUrl,
    FatalApiError,
    PermanentApiError,
    TransientApiError,
)

# Told of every API answer that carries a Date header: (sent, received, server time).
ServerTimeHook = Callable[[float, float, float], None]

DEFAULT_API_BASE = "https://api.krea.ai"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for API calls and for image downloads."""

    connect: float = 10.0
    api: float = 30.0  # whole request, for JSON calls
    stall: float = 30.0  # a download with less than STALL_BYTES in this long is dropped


STALL_BYTES = 1024  # a download must bring at least this much every Timeouts.stall seconds


@dataclass(frozen=True, slots=True)
class Limits:
    """The most a server's answer may make us hold or write."""

    image_bytes: int = 100_000_000  # one downloaded image (--max-image-bytes)
    answer_bytes: int = 16 << 20  # one JSON answer: a job is a few hundred bytes


@dataclass(frozen=True, slots=True)
class Download:
    """A file written by ``KreaClient.download``."""

    path: Path
    bytes: int
    sha256: str
    content_type: str


class KreaClient:
    """Talks to the Krea API, or to anything that answers like it (the emulator)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        limiter: SharedRate | None = None,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._limiter = limiter
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self._api_host = urlsplit(self.base_url).hostname
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.requests = 0  # API requests sent, downloads excluded
        self.requests_by: Counter[str] = Counter()  # by kind: submit, list, job, cancel, download
        self._now: Callable[[], float] = time.time
        self._on_server_time: ServerTimeHook | None = None

    def watch_server_clock(self, now: Callable[[], float], hook: ServerTimeHook) -> None:
        """Tell ``hook`` the server's ``Date`` of every API answer, timed by ``now``."""
        self._now, self._on_server_time = now, hook

    def __repr__(self) -> str:  # never shows the token
        return f"KreaClient({self.base_url!r})"

    async def __aenter__(self) -> KreaClient:
        if self._closed:
            raise RuntimeError("a KreaClient cannot be reopened once closed")
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"krea-batch/{__version__}"},
            connector=aiohttp.TCPConnector(
                limit=self._max_connections, resolver=resolver_for(self._api_host)
            ),
            timeout=aiohttp.ClientTimeout(total=self.timeouts.api, connect=self.timeouts.connect),
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with KreaClient(...)` before sending requests")
        return self._session

    # ---- the API ----------------------------------------------------------------------------

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        webhook_url: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> RemoteJob:
        """POST a job. AmbiguousSubmit means it may exist although we have no id for it.

        Any other error means the server holds no job for this request. ``before_send`` is
        awaited once the request may go, just before it does (the write-ahead journal line).
        """
        headers = {"X-Webhook-URL": webhook_url} if webhook_url else None
        data = await self._call(
            "POST",
            endpoint,
            "submit",
            json_body=body,
            headers=headers,
            ambiguous=True,
            before_send=before_send,
        )
        try:
            return RemoteJob.from_submit_answer(data)
        except MalformedJob as exc:
            message = f"POST {endpoint}: unusable answer ({exc})"
            raise AmbiguousSubmit(message, created=True) from exc

    async def upload_asset(self, path: Path) -> str:
        """``POST /assets`` a local file; returns the URL generation requests may use."""
        with path.open("rb") as handle:
            form = aiohttp.FormData()
            form.add_field("file", handle, filename=path.name)
            data = await self._call("POST", "/assets", "asset", data=form)
        url = data.get("image_url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise TransientApiError("POST /assets: the answer has no image_url")
        return url

    async def get_job(self, job_id: str) -> RemoteJob:
        data = await self._call("GET", f"/jobs/{quote(job_id, safe='')}", "job")
        try:
            job = RemoteJob.from_json(data)
        except MalformedJob as exc:
            raise TransientApiError(f"GET /jobs/{job_id}: unusable answer ({exc})") from exc
        if job.job_id != job_id:
            raise TransientApiError(f"GET /jobs/{job_id}: the answer is about job {job.job_id}")
        return job

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        """One page of the account's jobs, newest first, and the cursor of the next page.

        Items without a job id are skipped (nothing could claim them); any status is kept.
        The next page's cursor is read from ``next_cursor``, else ``nextCursor`` (both
        spellings appear in Krea's documentation).
        """
        params = {"limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        data = await self._call("GET", "/jobs", "list", params=params)
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise TransientApiError("GET /jobs: the answer has no items list")
        jobs = []
        for item in data["items"]:
            with contextlib.suppress(MalformedJob):
                jobs.append(ListedJob.from_json(item))
        next_cursor = data.get("next_cursor", data.get("nextCursor"))
        return jobs, next_cursor if isinstance(next_cursor, str) and next_cursor else None

    async def cancel(self, job_id: str) -> None:
        await self._call("DELETE", f"/jobs/{quote(job_id, safe='')}", "cancel")

    async def _call(
        self,
        method: str,
        path: str,
        kind: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ambiguous: bool = False,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        what = f"{method} {path}"
        # The token goes with API calls only, never with image downloads (pre-signed CDN URLs).
        headers = {**(headers or {}), "Authorization": f"Bearer {self._token}"}
        if self._limiter is not None:
            # Submits take turns with the rest (polls, listings, cancels): neither starves.
            await self._limiter.acquire("submit" if kind == "submit" else "track")
        if before_send is not None:
            await before_send()
        self.requests += 1
        self.requests_by[kind] += 1
        sent = self._now()
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=json_body,
                data=data,
                params=params,
                headers=headers,
            ) as response:
                status = response.status
                server_time = http_date(response.headers.get("Date"))
                if server_time is not None and self._on_server_time is not None:
                    self._on_server_time(sent, self._now(), server_time)
                retry_after = _retry_after(response.headers.get("Retry-After"), server_time)
                raw = await _read_at_most(response, self.limits.answer_bytes)
                if raw is None:
                    message = (
                        f"{what}: {status} with an answer over {self.limits.answer_bytes} bytes"
                    )
                    raise _lost(message, ambiguous, status=status, created=200 <= status < 300)
        except aiohttp.ClientConnectorError as exc:
            raise TransientApiError(f"{what}: cannot connect ({exc.os_error})") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientApiError(f"{what}: cannot connect (timed out)") from exc
        except TimeoutError as exc:
            raise _lost(f"{what}: no answer within {self.timeouts.api:g} s", ambiguous) from exc
        except aiohttp.ClientError as exc:
            message = f"{what}: connection lost ({type(exc).__name__})"
            raise _lost(message, ambiguous) from exc
        if 200 <= status < 300:
            if not raw and method == "DELETE":
                return None
            try:
                return jsontext.loads(raw)  # any encoding JSON allows; anything else is malformed
            except ValueError as exc:
                message = f"{what}: {status} with malformed JSON"
                raise _lost(message, ambiguous, status=status, created=True) from exc
        # An error page may come in any encoding (a proxy's Latin-1 502 page): never fail on it.
        message = _server_message(raw.decode("utf-8", errors="replace")) or f"HTTP {status}"
        if status == 401:
            raise FatalApiError(
                f"{what}: 401 not authenticated ({message}); check the API token", status=status
            )
        if status == 402:
            raise FatalApiError(f"{what}: 402 out of credits ({message})", status=status)
        if status == 429:
            raise TransientApiError(
                f"{what}: 429 {message}",
                status=status,
                retry_after=retry_after,
                overload="concurrent" in message.lower(),
            )
        if status >= 500:
            raise _lost(f"{what}: {status} {message}", ambiguous, status=status, retry=retry_after)
        raise PermanentApiError(f"{what}: {status} {message}", status=status)

    # ---- downloads --------------------------------------------------------------------------

    async def download(
        self, url: str, dest: Path, place: Callable[[Path, str], Path] | None = None
    ) -> Download:
        """Stream ``url`` into ``dest``, fsynced.

        ``place(dest, content_type)``, if given, moves the file into place in the same
        worker-thread call that wrote it; ``Download.path`` is then where it went.
        """
        stall = self.timeouts.stall
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=stall)
        digest = hashlib.sha256()
        size = 0
        self.requests_by["download"] += 1
        try:
            async with self._follow(url, timeout) as response:
                if response.status in (401, 403, 404, 410):
                    raise ExpiredUrl(
                        f"GET image: {response.status} (the URL expired or is gone)",
                        status=response.status,
                    )
                if response.status != 200:
                    raise TransientApiError(f"GET image: {response.status}", status=response.status)
                # Asked for none, a server may still encode the body: aiohttp decodes it, and the
                # declared length is then the encoded one. The cap applies to decoded bytes.
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                encoded = encoding not in ("", "identity")
                expected = None if encoded else response.content_length
                content_type = response.headers.get("Content-Type", "")
                cap = self.limits.image_bytes
                if expected is not None and expected > cap:
                    raise PermanentApiError(
                        f"GET image: declares {expected:,} bytes, above the limit of {cap:,} "
                        "(--max-image-bytes)"
                    )
                with _SpoolFile(dest) as out:
                    since, recent = time.monotonic(), 0
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        digest.update(chunk)
                        size += len(chunk)
                        recent += len(chunk)
                        if time.monotonic() - since >= stall:
                            if recent < STALL_BYTES:
                                raise TransientApiError(
                                    f"GET image: stalled ({recent} bytes in {stall:g} s)"
                                )
                            since, recent = time.monotonic(), 0
                        if size > cap:
                            raise PermanentApiError(
                                f"GET image: went on past the limit of {cap:,} bytes "
                                "(--max-image-bytes)"
                            )
                        await out.write(chunk)
                    if expected is not None and size != expected:
                        raise TransientApiError(f"GET image: got {size} of {expected} bytes")
                    if size == 0:
                        raise TransientApiError("GET image: empty file")
                    path = await out.commit(
                        None if place is None else functools.partial(place, dest, content_type)
                    )
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddress):
                raise PermanentApiError(f"GET image: {exc.os_error}") from exc
            raise TransientApiError(f"GET image: cannot connect ({exc.os_error})") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientApiError("GET image: cannot connect (timed out)") from exc
        except TimeoutError as exc:
            raise TransientApiError(f"GET image: stalled (nothing for {stall:g} s)") from exc
        except aiohttp.ClientError as exc:
            raise TransientApiError(
                f"GET image: download cut short ({type(exc).__name__})"
            ) from exc
        except ValueError as exc:  # a URL no library can use (a host label over 63 characters)
            raise PermanentApiError(f"GET image: unusable URL ({exc})") from exc
        except OSError as exc:  # writing the file, not the network: ours to stop for
            raise DiskError(str(dest.parent), exc) from exc
        return Download(path, size, digest.hexdigest(), content_type)

    @contextlib.asynccontextmanager
    async def _follow(
        self, url: str, client_timeout: aiohttp.ClientTimeout
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``url``, following redirects by hand so that each hop is checked: http(s)
        only, and no private address unless the API itself is at one."""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise PermanentApiError(f"GET image: {parts.scheme or 'no'} scheme; http(s) only")
            if is_private(parts.hostname) and not is_private(self._api_host):
                raise PermanentApiError(f"GET image: {parts.hostname} is a private address")
            async with self.session.get(
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
    """A file written from the event loop with as few thread hops as possible.

    Chunks wait in memory and go to disk in one worker-thread call (write, flush, fsync) at
    the end, or whenever ``SPILL`` bytes are waiting: an image of a few MB costs one hop, not
    one per chunk, and memory stays bounded for a large one.
    """

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

    async def commit(self, then: Callable[[], Path] | None = None) -> Path:
        """Everything on disk, fsynced, closed; then ``then()`` in the same thread call."""
        return await anyio.to_thread.run_sync(self._finish, then)

    def _drain(self, sync: bool) -> None:
        if self._handle is None:
            self._handle = self.path.open("wb")
        self._handle.write(b"".join(self._chunks))
        self._chunks, self._waiting = [], 0
        if sync:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def _finish(self, then: Callable[[], Path] | None) -> Path:
        self._drain(True)
        assert self._handle is not None
        self._handle.close()
        self._handle = None
        return self.path if then is None else then()


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None once it is longer than ``limit`` (read no further)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _lost(
    message: str,
    ambiguous: bool,
    *,
    status: int | None = None,
    retry: float | None = None,
    created: bool = False,
) -> ApiError:
    """The error for a request that reached the server and whose answer is lost or broken."""
    if ambiguous:
        return AmbiguousSubmit(message, status=status, created=created)
    return TransientApiError(message, status=status, retry_after=retry)


def _retry_after(value: str | None, server_time: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` asks for: a number, or an HTTP date (measured from the
    answer's own ``Date`` when it has one). Unreadable or NaN: None; a past date or a negative
    number: 0; ``inf`` stays inf, for the retry loop to clamp."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        moment = http_date(value)
        if moment is None:
            return None
        seconds = moment - (server_time if server_time is not None else time.time())
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _server_message(text: str) -> str:
    try:
        data = jsontext.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:200]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", data["error"]))
    return text.strip()[:200]
