"""The emulator's API without HTTP: accounts, jobs, the faults an answer may meet, figures.

Each call takes the account a token opened and returns an ``Answer`` (status, JSON, headers);
``runner.emulator.app`` serves them over HTTP, and tests may call them in-process.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.catalog import Catalog, load_catalog
from runner.emulator.accounts import ANY_TOKEN, Account, open_accounts
from runner.emulator.assets import AssetStore
from runner.emulator.config import EmulatorConfig
from runner.emulator.figures import Figures
from runner.emulator.images import image_format, image_size, render
from runner.emulator.jobs import EmulatedJob, Refused, body_hash, iso, parse_iso
from runner.emulator.statuses import TERMINAL, JobStatus

INTERNAL = "/_emulator/"
SUNSET = "Wed, 31 Dec 2026 23:59:59 GMT"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the API answers: a status, a JSON body, headers."""

    status: int
    data: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, message: str, headers: Mapping[str, str] | None = None) -> Answer:
        return cls(status, {"error": message}, headers or {})


NOT_JSON = object()  # a request body that is not JSON at all


class Dropped(Exception):
    """The connection is dropped after the server acted (a created job's answer is lost)."""


class EmulatorCore(Figures):
    """A Krea-compatible API's behaviour, over the accounts its tokens open."""

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
        # Called with ("submit" | "poll" | "list" | "download", job) as requests arrive (a listing:
        # once per job on the page). Tests use these to act at an exact point of a run (for
        # example, to kill the client mid-download).
        self.observers: list[Callable[[str, EmulatedJob], None]] = []
        self.assets = AssetStore(self.stats, clock)

    @property
    def clock(self) -> Callable[[], float]:
        return self.store.clock

    def account_for(self, token: str) -> Account | None:
        """The account a bearer token opens (None: no such token)."""
        if not token:
            return None
        if ANY_TOKEN in self.accounts:
            return self.accounts[ANY_TOKEN]
        return self.accounts.get(token)

    def count(self, account: Account | None, name: str) -> None:
        """Count an event in the emulator's figures and in the account's."""
        self.stats[name] += 1
        if account is not None:
            account.stats[name] += 1

    def admit(self, account: Account) -> Answer | None:
        """The account's rate and the injected server errors: an answer that refuses the
        request, or None to let it through."""
        account.stats["requests"] += 1
        throttled = "throttled" in self.config.faults_of(account.label)
        if throttled or not account.take_rate_token(self.config.rate_limit, self.clock()):
            self.count(account, "rate_limited")
            headers = {}
            if self.config.retry_after is not None:
                headers["Retry-After"] = f"{self.config.retry_after:g}"
            return Answer.error(429, "Too many requests, slow down.", headers)
        if self.rng.random() < self.config.error_rate:
            self.stats["errors_5xx"] += 1
            return Answer.error(self.rng.choice((500, 502, 503)), "Internal server error")
        return None

    # ---- the API ------------------------------------------------------------------------------

    def submit(
        self, account: Account, endpoint: str, body: Any, webhook_url: str | None, base: str
    ) -> Answer:
        """``POST /generate/image/…``; Dropped when the created job's answer is to be lost."""
        model = self.catalog.by_endpoint(endpoint)
        if model is None or model.endpoint != endpoint:
            return Answer.error(404, f"No such endpoint: POST {endpoint}")
        if model.id in self.config.retired:
            self.count(account, "gone")
            return Answer.error(410, f"{model.name} has been shut down.", {"Sunset": SUNSET})
        problem = self._body_problem(model, body)
        if problem is not None:
            self.stats["bad_requests"] += 1
            return Answer.error(*problem)
        try:
            job = account.store.create(model, body, webhook_url)
            job.origin = base  # for the URLs its webhook sends
        except Refused as refused:
            self.count(account, "refused_429" if refused.status == 429 else "refused_402")
            return Answer.error(refused.status, str(refused))
        self.count(account, "submits")
        self.submits_by_body[body_hash(body)] += 1
        self.notify("submit", job)
        lost = "lost-answers" in self.config.faults_of(account.label)
        if lost or self.rng.random() < self.config.reset_after_create:
            self.stats["resets_after_create"] += 1
            raise Dropped
        headers = {}
        if model.id in self.config.deprecated:
            headers = {"Deprecation": "true", "Sunset": SUNSET}
        # The submit answer always carries completed_at and result, as nulls.
        data = {"completed_at": None, "result": None, **self.job_json(job, base)}
        if self.config.dialect != "spec":
            del data["status"]  # Krea's current GPT Image 2 example has none
        return Answer(200, data, headers)

    def _body_problem(self, model: Any, body: Any) -> tuple[int, str] | None:
        if body is NOT_JSON:
            return 400, "The request body is not valid JSON."
        if not isinstance(body, dict):
            return 400, "The request body must be a JSON object."
        problems = list(model.problems(body))
        if problems:
            return 400, "; ".join(f"{path or 'body'}: {msg}" for path, msg in problems)
        unknown = self.assets.unknown_reference(body)
        if unknown is not None:
            return 422, f"Invalid asset URL: {unknown}"
        return None

    def get(self, account: Account, job_id: str, base: str) -> Answer:
        """``GET /jobs/{id}``."""
        self.count(account, "polls")
        job = self._own_job(account, job_id)
        if job is None:
            return Answer.error(404, "Job not found")
        self.notify("poll", job)
        return Answer(200, self.job_json(job, base))

    def cancel(self, account: Account, job_id: str, base: str) -> Answer:
        """``DELETE /jobs/{id}``: a job that has not ended is cancelled (and not billed). One
        that has ended, perhaps while the request travelled, stays as it is: 409 (Krea's spec
        documents only 200 and 404 for it; the client reads the job back either way)."""
        job = self._own_job(account, job_id)
        if job is None:
            return Answer.error(404, "Job not found")
        if not account.store.cancel(job):
            self.count(account, "cancels_refused")
            status = job.status(self.clock()).value
            return Answer.error(
                409, f"The job is {status}: only a job that has not ended can be cancelled"
            )
        self.count(account, "cancels")
        return Answer(200, self.job_json(job, base))

    def listing(self, account: Account, query: Mapping[str, str], base: str) -> Answer:
        """``GET /jobs``: newest first, a page of ``limit`` before ``cursor``."""
        if not self.config.listing:
            return Answer.error(404, "Not found")
        if "listing-down" in self.config.faults_of(account.label):
            self.count(account, "listing_down")
            return Answer.error(503, "Service unavailable")
        self.count(account, "lists")
        try:
            limit = int(query.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return Answer.error(400, "limit must be a whole number from 1 to 1000")
        try:
            before = parse_iso(query["cursor"]) if "cursor" in query else None
        except ValueError:
            return Answer.error(400, "cursor must be an ISO 8601 date-time")
        status = None
        if "status" in query:
            try:
                status = JobStatus(query["status"])
            except ValueError:
                return Answer.error(400, f"unknown status {query['status']!r}")
        types = {t for t in query.get("types", "").split(",") if t} or None
        listed = account.store.newest_first(before, status)
        if types is not None:
            listed = (job for job in listed if job_type(job) in types)
        jobs = list(itertools.islice(listed, limit + 1))
        for job in jobs[:limit]:
            self.notify("list", job)
        items = [self.job_json(job, base) for job in jobs]
        more = len(items) > limit
        items = items[:limit]
        next_cursor = items[-1]["created_at"] if more and items else None
        cursor_name = "next_cursor" if self.config.dialect == "spec" else "nextCursor"
        return Answer(200, {"items": items, cursor_name: next_cursor})

    def _own_job(self, account: Account, job_id: str) -> EmulatedJob | None:
        """The job, if it is the account's. Another account's job is not found, as the real
        API answers (and counted as ``wrong_account``)."""
        job = account.store.get(job_id)
        if job is None and self.any_job(job_id) is not None:
            self.count(account, "wrong_account")
        return job

    def any_job(self, job_id: str) -> EmulatedJob | None:
        for account in self.accounts.values():
            job = account.store.get(job_id)
            if job is not None:
                return job
        return None

    def job_json(self, job: EmulatedJob, base: str | None = None) -> dict[str, Any]:
        """The job as the API shows it; its image URLs start with ``base``."""
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
        base = job.origin if base is None else base
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

    # ---- images -------------------------------------------------------------------------------

    def image(self, job_id: str, name: str, expires: str | None) -> Answer | ImageWork:
        """An image of a job: what to render, or the error to answer."""
        self.stats["downloads"] += 1
        job = self.any_job(job_id)
        if job is None:
            return Answer.error(404, "No such image")
        self.notify("download", job)
        if expires is not None and self.clock() > float(expires):
            self.stats["downloads_expired"] += 1
            return Answer.error(403, "Request has expired")
        status = job.status(self.clock())
        preview = name.startswith("preview")
        if preview and status not in (JobStatus.INTERMEDIATE_COMPLETE, JobStatus.COMPLETED):
            return Answer.error(404, "No preview yet")
        if not preview and status != JobStatus.COMPLETED:
            return Answer.error(404, "The image is not ready")
        width, height = image_size(job.model, job.body)
        fmt, mime = ("JPEG", "image/jpeg") if preview else image_format(job.body)
        if preview:
            width, height = max(16, width // 8), max(16, height // 8)
        prompt = str(job.body.get("prompt", ""))
        return ImageWork(prompt, _seed_of(job, name), width, height, fmt, job.model.id, mime)

    # ---- figures ------------------------------------------------------------------------------

    def notify(self, event: str, job: EmulatedJob) -> None:
        for observer in self.observers:
            observer(event, job)


@dataclass(frozen=True, slots=True)
class ImageWork:
    """An image to render (slow: a thread's work) and the type it is served as."""

    prompt: str
    seed: int
    width: int
    height: int
    format: str
    model: str
    mime: str

    def render(self) -> bytes:
        return render(self.prompt, self.seed, self.width, self.height, self.format, self.model)


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
