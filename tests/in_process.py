"""The emulator in-process: an ``Api`` over ``EmulatorCore`` on a virtual clock, no socket.

A run through it is the real engine, journal and writer on the emulator's own job model and
faults (those a connection alone can show, such as truncated downloads, need the server:
``run_emulator``). A round trip takes ``rtt`` virtual seconds, half each way, so a job is
created in the middle of its POST, as over the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import anyio

from runner.api.client import answer_meaning, retry_after_of
from runner.api.downloads import Download
from runner.api.keys import ApiKey, fingerprint
from runner.api.remote import ListedJob, MalformedJob, RemoteJob
from runner.api.server_clock import ServerClock
from runner.api.webhooks import HookAddress, Receiver, WebhookSettings
from runner.emulator import EmulatorConfig
from runner.emulator.core import INTERNAL, Answer, Dropped, EmulatorCore
from runner.errors import AmbiguousSubmit, ExpiredUrl, FatalApiError, TransientApiError
from tests.virtual_time import VirtualClock, virtual_time

BASE = "http://127.0.0.1:9"  # where the in-process API says it is (a loopback: the emulator)


class InProcessApi:
    """One token's view of an ``EmulatorCore``."""

    def __init__(
        self,
        core: EmulatorCore,
        token: str,
        clock: VirtualClock,
        server_clock: ServerClock,
        rtt: float = 0.0,
    ) -> None:
        self.core = core
        self.token = token
        self.clock = clock
        self.server_clock = server_clock
        self.rtt = rtt
        self.account = fingerprint(token)
        self.requests_by: Counter[str] = Counter()

    async def _ask(
        self, kind: str, what: str, call: Callable[[Any], Answer], *, ambiguous: bool = False
    ) -> Any:
        self.requests_by[kind] += 1
        sent = self.clock.time()
        await self.clock.sleep(self.rtt / 2)
        account = self.core.account_for(self.token)
        if account is None:
            raise FatalApiError(f"{what}: 401 not authenticated; check the API token", status=401)
        try:
            answer = self.core.admit(account) or call(account)
        except Dropped:
            await self.clock.sleep(self.rtt / 2)
            raise AmbiguousSubmit(f"{what}: connection lost (reset)") from None
        await self.clock.sleep(self.rtt / 2)
        now = self.clock.time()
        self.server_clock.dated(sent, now, float(int(now)))  # a Date header: whole seconds
        retry_after = retry_after_of(answer.headers.get("Retry-After"), now)
        raw = json.dumps(answer.data).encode()
        return answer_meaning(what, answer.status, raw, retry_after, ambiguous)

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        webhook_url: str | None = None,
        before_send: Callable[[], Any] | None = None,
    ) -> RemoteJob:
        if before_send is not None:
            await before_send()
        data = await self._ask(
            "submit",
            f"POST {endpoint}",
            lambda account: self.core.submit(account, endpoint, dict(body), webhook_url, BASE),
            ambiguous=True,
        )
        try:
            return RemoteJob.from_submit_answer(data)
        except MalformedJob as exc:
            raise AmbiguousSubmit(
                f"POST {endpoint}: unusable answer ({exc})", created=True
            ) from exc

    async def get_job(self, job_id: str) -> RemoteJob:
        what = f"GET /jobs/{job_id}"
        data = await self._ask("job", what, lambda a: self.core.get(a, job_id, BASE))
        try:
            return RemoteJob.from_json(data)
        except MalformedJob as exc:
            raise TransientApiError(f"{what}: unusable answer ({exc})") from exc

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        query = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        data = await self._ask("list", "GET /jobs", lambda a: self.core.listing(a, query, BASE))
        jobs = [ListedJob.from_json(item) for item in data["items"]]
        following = data.get("next_cursor", data.get("nextCursor"))
        return jobs, following or None

    async def cancel(self, job_id: str) -> None:
        await self._ask(
            "cancel", f"DELETE /jobs/{job_id}", lambda a: self.core.cancel(a, job_id, BASE)
        )

    async def download(self, url: str, dest: Path) -> Download:
        self.requests_by["download"] += 1
        parts = urlsplit(url)
        job_id, name = parts.path.removeprefix(INTERNAL + "images/").split("/")
        expires = parse_qs(parts.query).get("expires", [None])[0]
        await self.clock.sleep(self.rtt)
        work = self.core.image(job_id, name, expires)
        if isinstance(work, Answer):
            raise ExpiredUrl(f"GET image: {work.status}", status=work.status)
        data = work.render()
        return Download(dest, len(data), hashlib.sha256(data).hexdigest(), work.mime, data)

    async def upload_asset(self, path: Path) -> str:
        raise TransientApiError("POST /assets: not served in-process (use run_emulator)")


@dataclass
class InProcess:
    """An emulator core on a virtual clock, and what ``run_batch`` needs to run against it."""

    emulator: EmulatorCore
    clock: VirtualClock
    rtt: float = 0.0

    def connect(self, key: ApiKey, server_clock: ServerClock) -> InProcessApi:
        return InProcessApi(self.emulator, key.token, self.clock, server_clock, self.rtt)

    url = BASE

    @property
    def via(self) -> dict[str, Any]:
        """``run_batch``'s keyword arguments for a run against it (the tokens aside)."""
        return {
            "api_base": BASE,
            "connect": self.connect,
            "clock": self.clock,
            "listen": self.listen,
        }

    @contextlib.asynccontextmanager
    async def listen(
        self, settings: WebhookSettings, receiver: Receiver
    ) -> AsyncIterator[HookAddress]:
        """The run's webhook receiver, handed each ended job's delivery in-process (a check
        every 50 virtual ms; ``webhook_drop_rate`` drops some, ``webhook_repeats`` repeats)."""

        async def deliver() -> None:
            config = self.emulator.config
            while True:
                await self.clock.sleep(0.05)
                for job in self.emulator.due_webhooks():
                    if job.webhook_url is None:
                        continue
                    query = dict(parse_qsl(urlsplit(job.webhook_url).query))
                    raw = json.dumps(self.emulator.job_json(job, BASE)).encode()
                    for _ in range(config.webhook_repeats):
                        if self.emulator.rng.random() >= config.webhook_drop_rate:
                            receiver.accept(query, raw)

        async with anyio.create_task_group() as group:
            group.start_soon(deliver)
            yield HookAddress(settings.public_url, receiver.secret)
            group.cancel_scope.cancel()

    def run_args(self, token: str = "t") -> dict[str, Any]:
        """``run_batch``'s keyword arguments for a run as ``token``."""
        return {**self.via, "token": token}


@contextlib.asynccontextmanager
async def in_process(
    config: EmulatorConfig | None = None, rtt: float = 0.0
) -> AsyncIterator[InProcess]:
    """An emulator core in-process, its virtual clock driven for the block."""
    clock = VirtualClock()
    core = EmulatorCore(config, clock=clock.time)
    async with virtual_time(clock):
        yield InProcess(core, clock, rtt)
