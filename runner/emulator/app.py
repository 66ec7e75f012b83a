"""The emulator's HTTP side: the Krea API routes over ``EmulatorCore``, the faults only a
connection can show (travel time, resets, garbled and truncated answers), webhooks, stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from runner.catalog import Catalog
from runner.emulator.accounts import Account
from runner.emulator.config import EmulatorConfig
from runner.emulator.core import INTERNAL, NOT_JSON, Answer, Dropped, EmulatorCore
from runner.emulator.jobs import EmulatedJob

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _response(answer: Answer) -> web.Response:
    return web.json_response(answer.data, status=answer.status, headers=dict(answer.headers))


class Emulator(EmulatorCore):
    """A Krea-compatible API in one aiohttp application."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        catalog: Catalog | None = None,
    ) -> None:
        super().__init__(config, clock=clock, catalog=catalog)
        self.webhooks: list[tuple[str, str]] = []  # (job id, url) of each delivery made
        self._delivery: asyncio.Task[None] | None = None
        self._again: list[tuple[float, int, EmulatedJob]] = []  # (due, tries so far, job)
        self._client: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults])
        app.router.add_post("/generate/image/{path:.+}", self.submit_route)
        app.router.add_get("/jobs", self.list_route)
        app.router.add_get("/jobs/{id}", self.get_route)
        app.router.add_delete("/jobs/{id}", self.cancel_route)
        app.router.add_get(INTERNAL + "images/{id}/{name}", self.image_route)
        app.router.add_get(INTERNAL + "stats", self.get_stats)
        app.router.add_post("/assets", self.assets.upload)
        app.router.add_get(INTERNAL + "assets/{id}", self.assets.serve)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    # ---- faults -----------------------------------------------------------------------------

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == INTERNAL + "stats":
            return await handler(request)
        # A distant server: half the round trip before the request arrives, half on the way
        # back, so a job is created in the middle of its POST's time on the wire.
        await self._travel()
        if request.path.startswith(INTERNAL):
            return await handler(request)  # images: _send waits the way back before prepare
        response = await self._answer(request, handler)
        if not response.prepared:
            await self._travel()
        return response

    async def _travel(self) -> None:
        if self.config.rtt > 0:
            await asyncio.sleep(self.config.rtt / 2)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.stats["requests"] += 1
        if self.rng.random() < self.config.reset_rate:
            self.stats["resets"] += 1
            return self._drop(request)
        account = self.account_for(_token(request))
        if account is None:
            self.stats["unauthorized"] += 1
            return _response(Answer.error(401, "Unauthorized: send Authorization: Bearer <token>"))
        refusal = self.admit(account)
        if refusal is not None:
            return _response(refusal)
        try:
            response = await handler(request)
        except Dropped:
            return self._drop(request)  # never reaches the client: the socket is gone
        if self._should_garble(response):
            self.stats["malformed"] += 1
            assert isinstance(response, web.Response)
            text = response.body if isinstance(response.body, bytes) else b"{}"
            response.body = text[: max(1, len(text) // 2)]
        return response

    def _should_garble(self, response: web.StreamResponse) -> bool:
        is_json = isinstance(response, web.Response) and response.content_type == "application/json"
        return is_json and response.status == 200 and self.rng.random() < self.config.malformed_rate

    def _drop(self, request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)

    # ---- routes -------------------------------------------------------------------------------

    def _ours(self, request: web.Request) -> tuple[Account, str]:
        account = self.account_for(_token(request))
        assert account is not None  # _answer let only known tokens through
        return account, f"{request.scheme}://{request.host}"

    async def submit_route(self, request: web.Request) -> web.Response:
        account, base = self._ours(request)
        endpoint = "/generate/image/" + request.match_info["path"]
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = NOT_JSON
        except ConnectionResetError:  # the client went away mid-request (a kill -9)
            raise Dropped from None
        webhook = request.headers.get("X-Webhook-URL")
        return _response(self.submit(account, endpoint, body, webhook, base))

    async def get_route(self, request: web.Request) -> web.Response:
        account, base = self._ours(request)
        return _response(self.get(account, request.match_info["id"], base))

    async def cancel_route(self, request: web.Request) -> web.Response:
        account, base = self._ours(request)
        answer = self.cancel(account, request.match_info["id"], base)
        return _response(answer)

    async def list_route(self, request: web.Request) -> web.Response:
        account, base = self._ours(request)
        return _response(self.listing(account, request.query, base))

    async def image_route(self, request: web.Request) -> web.StreamResponse:
        work = self.image(
            request.match_info["id"], request.match_info["name"], request.query.get("expires")
        )
        if isinstance(work, Answer):
            return _response(work)
        data = await asyncio.to_thread(work.render)
        return await self._send(request, data, work.mime)

    async def _send(self, request: web.Request, data: bytes, mime: str) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": mime, "Content-Length": str(len(data))}
        )
        await self._travel()
        cut = len(data)
        if self.rng.random() < self.config.truncate_rate:
            self.stats["downloads_truncated"] += 1
            cut = self.rng.randrange(1, max(2, len(data)))
        rate = self.config.download_bytes_per_s
        chunk = 64 * 1024 if rate is None else max(1, int(rate / 20))
        try:
            await response.prepare(request)
            for offset in range(0, cut, chunk):
                piece = data[offset : min(cut, offset + chunk)]
                if rate is not None:
                    await asyncio.sleep(len(piece) / rate)  # pace first, so it all takes time
                await response.write(piece)
            if cut < len(data):
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-download: nothing more to do
        return response

    # ---- webhooks and stats ----------------------------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._delivery = asyncio.create_task(self._deliver_webhooks())

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._delivery is not None:
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery
        if self._client is not None:
            await self._client.close()

    async def _deliver_webhooks(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            for job in self.due_webhooks():
                for _ in range(self.config.webhook_repeats):
                    if self.rng.random() < self.config.webhook_drop_rate:
                        self.stats["webhooks_dropped"] += 1
                        continue
                    await self._try_webhook(job, 0)
            again, self._again = self._again, []
            for when, tries, job in again:
                if when <= time.monotonic():
                    await self._try_webhook(job, tries)
                else:
                    self._again.append((when, tries, job))

    async def _try_webhook(self, job: EmulatedJob, tries: int) -> None:
        """Deliver, and when the receiver does not take it, try again later (if allowed)."""
        if not await self._post_webhook(job) and tries < self.config.webhook_retries:
            self.stats["webhooks_retried"] += 1
            self._again.append((time.monotonic() + 2.0**tries, tries + 1, job))

    async def _post_webhook(self, job: EmulatedJob) -> bool:
        """One delivery; True when the receiver took it (a 2xx)."""
        if self._client is None or job.webhook_url is None:
            return True
        try:
            async with self._client.post(job.webhook_url, json=self.job_json(job)) as response:
                await response.read()
                taken = response.status < 300
            self.stats["webhooks_sent"] += 1
            self.webhooks.append((job.id, job.webhook_url))
            return taken
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats["webhooks_failed"] += 1
            log.info("webhook to %s failed: %s", job.webhook_url, exc)
            return False

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())


def _token(request: web.Request) -> str:
    """The request's bearer token ("" without one)."""
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
