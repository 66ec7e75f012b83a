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
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from runner import __version__, jsontext
from runner.api.addresses import resolver_for
from runner.api.bounds import Limits, Timeouts
from runner.api.downloads import Download, download
from runner.api.keys import fingerprint
from runner.api.limiter import SharedRate
from runner.api.remote import ListedJob, MalformedJob, RemoteJob
from runner.api.server_clock import ServerClock
from runner.api.skew import http_date
from runner.clock import Clock, SystemClock
from runner.errors import (
    AmbiguousSubmit,
    ApiError,
    FatalApiError,
    PermanentApiError,
    TransientApiError,
)

DEFAULT_API_BASE = "https://api.krea.ai"


class KreaClient:
    """Talks to the Krea API, or to anything that answers like it (the emulator): the
    ``runner.api.port.Api`` over HTTP.

    ``session``: an aiohttp session to send with, the caller's to close (by default the
    client makes its own on ``open``). ``clock`` times requests; ``server_clock`` is told the
    ``Date`` of every answer."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        limiter: SharedRate | None = None,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        max_connections: int = 64,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        server_clock: ServerClock | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.account = fingerprint(token)  # how logs and the journal name the key
        self._limiter = limiter
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self._api_host = urlsplit(self.base_url).hostname
        self._max_connections = max_connections
        self._session = session
        self._own_session = session is None
        self._closed = False
        self.requests = 0  # API requests sent, downloads excluded
        self.requests_by: Counter[str] = Counter()  # by kind: submit, list, job, cancel, download
        self.clock: Clock = clock or SystemClock()
        self.server_clock = server_clock

    def __repr__(self) -> str:  # never shows the token
        return f"KreaClient({self.base_url!r})"

    async def __aenter__(self) -> KreaClient:
        self.open()
        return self

    def open(self) -> None:
        """Make the session (inside a running event loop), as ``async with`` does: a pool
        opens a key's client when the key first gets a job."""
        if self._session is not None:
            return
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

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and self._own_session:
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
        request = {"json": json_body, "data": data, "params": params, "headers": headers}
        try:
            answer = await self._exchange(method, path, request, ambiguous)
        except aiohttp.ClientConnectorError as exc:
            raise TransientApiError(f"{what}: cannot connect ({exc.os_error})") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientApiError(f"{what}: cannot connect (timed out)") from exc
        except TimeoutError as exc:
            raise _lost(f"{what}: no answer within {self.timeouts.api:g} s", ambiguous) from exc
        except aiohttp.ClientError as exc:
            message = f"{what}: connection lost ({type(exc).__name__})"
            raise _lost(message, ambiguous) from exc
        return answer_meaning(what, *answer, ambiguous)

    async def _exchange(
        self, method: str, path: str, request: Mapping[str, Any], ambiguous: bool
    ) -> tuple[int, bytes, float | None]:
        """Send one request: its status, its body (bounded) and its Retry-After."""
        sent = self.clock.time()
        async with self.session.request(method, self.base_url + path, **request) as response:
            status = response.status
            server_time = http_date(response.headers.get("Date"))
            if server_time is not None and self.server_clock is not None:
                self.server_clock.dated(sent, self.clock.time(), server_time)
            retry_after = retry_after_of(
                response.headers.get("Retry-After"),
                server_time if server_time is not None else self.clock.time(),
            )
            raw = await _read_at_most(response, self.limits.answer_bytes)
            if raw is None:
                limit = self.limits.answer_bytes
                message = f"{method} {path}: {status} with an answer over {limit} bytes"
                raise _lost(message, ambiguous, status=status, created=200 <= status < 300)
        return status, raw, retry_after

    async def download(self, url: str, dest: Path) -> Download:
        """Stream an image into ``dest`` (``runner.api.downloads.download``); not counted
        among API requests, and sent without the token."""
        self.requests_by["download"] += 1
        return await download(
            self.session,
            url,
            dest,
            api_host=self._api_host,
            limits=self.limits,
            timeouts=self.timeouts,
            now=self.clock.monotonic,
        )


def answer_meaning(
    what: str, status: int, raw: bytes, retry_after: float | None, ambiguous: bool
) -> Any:
    """What an answer says: its JSON, or the error its status means."""
    if 200 <= status < 300:
        if not raw and what.startswith("DELETE"):
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


def retry_after_of(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` asks for: a number, or an HTTP date (measured from ``now``:
    the answer's own ``Date`` when it has one). Unreadable or NaN: None; a past date or a
    negative number: 0; ``inf`` stays inf, for the retry loop to clamp."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        moment = http_date(value)
        if moment is None:
            return None
        seconds = moment - now
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
