"""The emulator's HTTP side: the Krea API routes, injected faults, images, webhooks, stats."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from runner.catalog import Catalog, load_catalog
from runner.emulator.accounts import ANY_TOKEN, Account, open_accounts
from runner.emulator.assets import AssetStore
from runner.emulator.config import EmulatorConfig
from runner.emulator.images import image_format, image_size, render
from runner.emulator.jobs import EmulatedJob, Refused, body_hash, iso, parse_iso
from runner.emulator.statuses import TERMINAL, JobStatus

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INTERNAL = "/_emulator/"
SUNSET = "Wed, 31 Dec 2026 23:59:59 GMT"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class _Dropped(Exception):
    """The connection was dropped on purpose; nothing is to be answered."""


class Emulator:
    """A Krea-compatible API in one aiohttp application."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        catalog: Catalog | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.catalog = catalog or load_catalog()
        self.rng = random.Random(self.config.seed)
        self.accounts = open_accounts(self.config, clock, self.rng)
        self.store = next(iter(self.accounts.values())).store  # the first account's jobs
        self.stats: Counter[str] = Counter()
        self.submits_by_body: Counter[str] = Counter()
        self.webhooks: list[tuple[str, str]] = []  # (job id, url) of each delivery made
        # Called with ("submit" | "poll" | "list" | "download", job) as requests arrive (a listing:
        # once per job on the page). Tests use these to act at an exact point of a run (for
        # example, to kill the client mid-download).
        self.observers: list[Callable[[str, EmulatedJob], None]] = []
        self.assets = AssetStore(self.stats, clock)
        self._delivery: asyncio.Task[None] | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def clock(self) -> Callable[[], float]:
        return self.store.clock

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults])
        app.router.add_post("/generate/image/{path:.+}", self.submit)
        app.router.add_get("/jobs", self.list_jobs)
        app.router.add_get("/jobs/{id}", self.get_job)
        app.router.add_delete("/jobs/{id}", self.cancel_job)
        app.router.add_get(INTERNAL + "images/{id}/{name}", self.image)
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
        account = self._account_of(request)
        if account is None:
            self.stats["unauthorized"] += 1
            return _error(401, "Unauthorized: send Authorization: Bearer <token>")
        account.stats["requests"] += 1
        throttled = "throttled" in self.config.faults_of(account.label)
        if throttled or not account.take_rate_token(self.config.rate_limit, self.clock()):
            self._count(request, "rate_limited")
            headers = {}
            if self.config.retry_after is not None:
                headers["Retry-After"] = f"{self.config.retry_after:g}"
            return _error(429, "Too many requests, slow down.", headers)
        if self.rng.random() < self.config.error_rate:
            self.stats["errors_5xx"] += 1
            status = self.rng.choice((500, 502, 503))
            return _error(status, "Internal server error")
        try:
            response = await handler(request)
        except _Dropped:
            return web.Response(status=500)  # never reaches the client: the socket is gone
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

    def _account_of(self, request: web.Request) -> Account | None:
        """The account the request's bearer token opens (None: no such token)."""
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not token:
            return None
        if ANY_TOKEN in self.accounts:
            return self.accounts[ANY_TOKEN]
        return self.accounts.get(token)

    def _account(self, request: web.Request) -> Account:
        """The account of a request ``_answer`` let through (its token opened one)."""
        account = self._account_of(request)
        assert account is not None
        return account

    def _count(self, request: web.Request, name: str) -> None:
        """Count an event in the emulator's figures and in the requesting account's."""
        self.stats[name] += 1
        account = self._account_of(request)
        if account is not None:
            account.stats[name] += 1

    def _own_job(self, request: web.Request) -> EmulatedJob | None:
        """The job the path names, if it is the requesting account's. Another account's job
        is not found, as the real API answers (and counted as ``wrong_account``)."""
        account = self._account(request)
        job_id = request.match_info["id"]
        job = account.store.get(job_id)
        if job is None and self._any_job(job_id) is not None:
            self._count(request, "wrong_account")
        return job

    def _any_job(self, job_id: str) -> EmulatedJob | None:
        for account in self.accounts.values():
            job = account.store.get(job_id)
            if job is not None:
                return job
        return None

    # ---- API --------------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        endpoint = "/generate/image/" + request.match_info["path"]
        model = self.catalog.by_endpoint(endpoint)
        if model is None or model.endpoint != endpoint:
            return _error(404, f"No such endpoint: POST {endpoint}")
        if model.id in self.config.retired:
            self._count(request, "gone")
            return _error(410, f"{model.name} has been shut down.", {"Sunset": SUNSET})
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.stats["bad_requests"] += 1
            return _error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            self.stats["bad_requests"] += 1
            return _error(400, "The request body must be a JSON object.")
        problems = list(model.problems(body))
        if problems:
            self.stats["bad_requests"] += 1
            return _error(400, "; ".join(f"{path or 'body'}: {msg}" for path, msg in problems))
        unknown = self.assets.unknown_reference(body)
        if unknown is not None:
            self.stats["bad_requests"] += 1
            return _error(422, f"Invalid asset URL: {unknown}")
        try:
            store = self._account(request).store
            job = store.create(model, body, request.headers.get("X-Webhook-URL"))
            job.origin = f"{request.scheme}://{request.host}"  # for the URLs its webhook sends
        except Refused as refused:
            self._count(request, "refused_429" if refused.status == 429 else "refused_402")
            return _error(refused.status, str(refused))
        self._count(request, "submits")
        self.submits_by_body[body_hash(body)] += 1
        self._notify("submit", job)
        lost = "lost-answers" in self.config.faults_of(self._account(request).label)
        if lost or self.rng.random() < self.config.reset_after_create:
            self.stats["resets_after_create"] += 1
            self._drop(request)
            raise _Dropped
        headers = {}
        if model.id in self.config.deprecated:
            headers = {"Deprecation": "true", "Sunset": SUNSET}
        # The submit answer always carries completed_at and result, as nulls.
        data = {"completed_at": None, "result": None, **self.job_json(job, request)}
        if self.config.dialect != "spec":
            del data["status"]  # Krea's current GPT Image 2 example has none
        return web.json_response(data, headers=headers)

    async def get_job(self, request: web.Request) -> web.Response:
        self._count(request, "polls")
        job = self._own_job(request)
        if job is None:
            return _error(404, "Job not found")
        self._notify("poll", job)
        return web.json_response(self.job_json(job, request))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = self._own_job(request)
        if job is None:
            return _error(404, "Job not found")
        self._count(request, "cancels")
        self._account(request).store.cancel(job)
        return web.json_response(self.job_json(job, request))

    async def list_jobs(self, request: web.Request) -> web.Response:
        if not self.config.listing:
            return _error(404, "Not found")
        if "listing-down" in self.config.faults_of(self._account(request).label):
            self._count(request, "listing_down")
            return _error(503, "Service unavailable")
        self._count(request, "lists")
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "limit must be a whole number from 1 to 1000")
        try:
            before = parse_iso(query["cursor"]) if "cursor" in query else None
        except ValueError:
            return _error(400, "cursor must be an ISO 8601 date-time")
        status = None
        if "status" in query:
            try:
                status = JobStatus(query["status"])
            except ValueError:
                return _error(400, f"unknown status {query['status']!r}")
        types = {t for t in query.get("types", "").split(",") if t} or None
        listed = self._account(request).store.newest_first(before, status)
        if types is not None:
            listed = (job for job in listed if job_type(job) in types)
        jobs = list(itertools.islice(listed, limit + 1))
        for job in jobs[:limit]:
            self._notify("list", job)
        items = [self.job_json(job, request) for job in jobs]
        more = len(items) > limit
        items = items[:limit]
        next_cursor = items[-1]["created_at"] if more and items else None
        cursor_name = "next_cursor" if self.config.dialect == "spec" else "nextCursor"
        return web.json_response({"items": items, cursor_name: next_cursor})

    def job_json(self, job: EmulatedJob, request: web.Request | None = None) -> dict[str, Any]:
        now = self.clock()
        status = job.status(now)
        data: dict[str, Any] = {
            "job_id": job.id,
            "status": status.value,
            "created_at": iso(job.created),
            "type": job_type(job),
        }
        if status in TERMINAL and job.end is not None:
            data["completed_at"] = iso(job.end)
        base = f"{request.scheme}://{request.host}" if request else job.origin
        expires = ""
        if self.config.url_ttl is not None:
            expires = f"?expires={now + self.config.url_ttl:.3f}"
        if status == JobStatus.COMPLETED:
            ext = image_format(job.body)[0].lower().replace("jpeg", "jpg")
            urls = [
                f"{base}{INTERNAL}images/{job.id}/{n}.{ext}{expires}"
                for n in range(self.config.images_per_job)
            ]
            data["result"] = {"urls": self._shaped(urls)}
            if self.config.report_seed:  # the seed its first image was drawn from
                data["result"]["seed"] = _seed_of(job, "0")
        elif status == JobStatus.INTERMEDIATE_COMPLETE:
            data["result"] = {"urls": [f"{base}{INTERNAL}images/{job.id}/preview.jpg{expires}"]}
        elif status == JobStatus.FAILED:
            # The API puts the reason in either place; clients must read both.
            if int(job.id[-1], 16) % 2:
                data["result"] = {"error": job.failure_reason}
            else:
                data["error"] = {"message": job.failure_reason, "code": "generation_failed"}
        return data

    def _shaped(self, urls: list[str]) -> Any:
        """Result URLs in the configured dialect's shape."""
        if self.config.dialect == "docs":
            return [{"type": "image", "url": url} for url in urls]
        if self.config.dialect == "map":
            return {f"image_{n}": url for n, url in enumerate(urls)}
        return urls

    # ---- images -----------------------------------------------------------------------------

    async def image(self, request: web.Request) -> web.StreamResponse:
        self.stats["downloads"] += 1
        job = self._any_job(request.match_info["id"])
        name = request.match_info["name"]
        if job is None:
            return _error(404, "No such image")
        self._notify("download", job)
        expires = request.query.get("expires")
        if expires is not None and self.clock() > float(expires):
            self.stats["downloads_expired"] += 1
            return _error(403, "Request has expired")
        status = job.status(self.clock())
        preview = name.startswith("preview")
        if preview and status not in (JobStatus.INTERMEDIATE_COMPLETE, JobStatus.COMPLETED):
            return _error(404, "No preview yet")
        if not preview and status != JobStatus.COMPLETED:
            return _error(404, "The image is not ready")
        width, height = image_size(job.model, job.body)
        fmt, mime = ("JPEG", "image/jpeg") if preview else image_format(job.body)
        if preview:
            width, height = max(16, width // 8), max(16, height // 8)
        seed = _seed_of(job, name)
        data = await asyncio.to_thread(
            render, str(job.body.get("prompt", "")), seed, width, height, fmt, job.model.id
        )
        return await self._send(request, data, mime)

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
            now = self.clock()
            due = [
                (waiting, job)
                for waiting in (
                    account.store.awaiting_webhook for account in self.accounts.values()
                )
                for job in waiting.values()
                if job.status(now) in TERMINAL
            ]
            for waiting, job in due:
                del waiting[job.id]
                for _ in range(self.config.webhook_repeats):
                    if self.rng.random() < self.config.webhook_drop_rate:
                        self.stats["webhooks_dropped"] += 1
                        continue
                    await self._post_webhook(job)

    async def _post_webhook(self, job: EmulatedJob) -> None:
        if self._client is None or job.webhook_url is None:
            return
        try:
            async with self._client.post(job.webhook_url, json=self.job_json(job)) as response:
                await response.read()
            self.stats["webhooks_sent"] += 1
            self.webhooks.append((job.id, job.webhook_url))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats["webhooks_failed"] += 1
            log.info("webhook to %s failed: %s", job.webhook_url, exc)

    def _notify(self, event: str, job: EmulatedJob) -> None:
        for observer in self.observers:
            observer(event, job)

    def paid_twice(self) -> list[str]:
        """Request bodies with more than one job that was not failed or cancelled (billed twice)."""
        now = self.clock()
        billed: Counter[str] = Counter()
        jobs = (job for account in self.accounts.values() for job in account.store.jobs.values())
        for job in jobs:
            if job.status(now) not in (JobStatus.FAILED, JobStatus.CANCELLED):
                billed[body_hash(job.body)] += 1
        return [body for body, count in billed.items() if count > 1]

    def snapshot(self) -> dict[str, Any]:
        """What the emulator saw: counters, submits per request body, jobs by status."""
        now = self.clock()
        by_status: Counter[str] = Counter()
        for account in self.accounts.values():
            by_status.update(account.store.counts())
        data = {
            **dict(sorted(self.stats.items())),
            "submits_by_body": dict(self.submits_by_body),
            "duplicate_submits": sum(n - 1 for n in self.submits_by_body.values() if n > 1),
            "paid_twice": len(self.paid_twice()),
            "jobs_by_status": dict(by_status),
            "credits_spent": round(
                sum(account.store.spent(now) for account in self.accounts.values()), 3
            ),
        }
        if len(self.accounts) > 1:
            data["accounts"] = {
                account.label: account.snapshot(now) for account in self.accounts.values()
            }
        return data

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())


def job_type(job: EmulatedJob) -> str:
    """The job's ``type`` as the listing shows and filters it (the endpoint's provider)."""
    return job.model.endpoint.split("/")[3]


def _seed_of(job: EmulatedJob, name: str) -> int:
    """The seed the image is drawn from: the request's, else the model's default, else random."""
    seed = job.body.get("seed")
    if seed is None:
        param = job.model.param("seed")
        seed = param.default if param and param.default is not None else int(job.id[:8], 16)
    stem = name.split(".")[0]
    return int(seed) + (int(stem) if stem.isdigit() else 0)
