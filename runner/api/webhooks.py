"""Receiving Krea's webhooks: a small aiohttp server inside the run.

Each submit carries ``X-Webhook-URL``: the public address given with ``--webhook-url`` plus the
job's key and its signature, an HMAC of the key under the output folder's secret (query
parameters, which proxies pass on unchanged). The secret is the folder's, kept in its state
folder, so a run that resumes one killed mid-flight still takes the deliveries of the jobs it
left behind. A delivery whose signature does not match is refused; one for a job in flight
wakes that job at once; every signed end says which key the job is of, so a job whose POST's
answer was lost identifies itself; the rest (repeats, late ones) are answered 200 and
ignored, so the sender does not try again. Polling goes on slowly beside it, so a lost
delivery never strands a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:  # the server side of aiohttp is loaded only by a run that takes webhooks
    from aiohttp import web

from runner import jsontext
from runner.api.remote import MalformedJob, RemoteJob
from runner.errors import UsageError
from runner.integers import parse_int

log = logging.getLogger(__name__)

SECRET_PARAM = "krea_batch_secret"  # the run's secret alone (earlier versions' URLs)
KEY_PARAM, SIG_PARAM = "krea_batch_key", "krea_batch_sig"
SECRET_NAME = "webhook-secret"  # in the folder's state folder
MAX_DELIVERY_BYTES = 1_000_000  # a job JSON is a few hundred bytes


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where deliveries are sent (the public URL) and where this machine takes them."""

    public_url: str
    host: str
    port: int

    @classmethod
    def parse(cls, public_url: str, listen: str) -> WebhookSettings:
        """From ``--webhook-url`` and ``--webhook-listen HOST:PORT``; UsageError when wrong."""
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"--webhook-url {public_url!r} is not an http(s) URL: give the address at which "
                "the API can reach this machine, e.g. https://batch.example.com/krea"
            )
        host, _, port = listen.rpartition(":")
        try:
            number = parse_int(port, "port", minimum=1, maximum=65535)
        except UsageError:
            number = None
        if not host or number is None:
            raise UsageError(
                f"--webhook-listen {listen!r} is not HOST:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:9000"
            )
        return cls(public_url, host.strip("[]"), number)


def with_secret(url: str, secret: str) -> str:
    """``url`` with the run's secret added to its query."""
    return _with(url, (SECRET_PARAM, secret))


def _with(url: str, *params: tuple[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params]
    return urlunsplit(parts._replace(query=urlencode(query)))


def signature(secret: str, key: str) -> str:
    """The key's signature under the folder's secret: no one without it can make one."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class HookAddress:
    """Where the API reports a job's end: ``for_key`` gives each job's own address."""

    url: str  # the public address (--webhook-url)
    secret: str = field(repr=False)

    def for_key(self, key: str) -> str:
        return _with(self.url, (KEY_PARAM, key), (SIG_PARAM, signature(self.secret, key)))


def folder_secret(state: Path) -> str:
    """The output folder's webhook secret, made on first use and kept in ``state`` (0600)."""
    path = state / SECRET_NAME
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except OSError:
        pass
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


@dataclass(slots=True)
class DeliveryCounts:
    """What the receiver did with what it was sent."""

    used: int = 0  # woke a job in flight
    ignored: int = 0  # a repeat, a late one, or a job this run does not follow
    refused: int = 0  # a wrong or missing secret
    malformed: int = 0  # the right secret, but not a job

    def to_json(self) -> dict[str, int]:
        return {
            "used": self.used,
            "ignored": self.ignored,
            "refused": self.refused,
            "malformed": self.malformed,
        }


@dataclass
class Receiver:
    """The handler: checks the secret, reads the job, hands it to ``deliver``."""

    deliver: Callable[[RemoteJob, str | None], bool]  # the job, and the key it says it is of
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    counts: DeliveryCounts = field(default_factory=DeliveryCounts)

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if self._signed_key(request.query) is None:  # refused before its body is read
            status, answer = self.accept(request.query, b"")
        else:
            raw = await request.content.read(MAX_DELIVERY_BYTES + 1)
            status, answer = self.accept(request.query, raw)
        return web.json_response(answer, status=status)

    def accept(self, query: Mapping[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        """A delivery to the address whose query is ``query``, with the body ``raw``: the
        HTTP status and JSON to answer it with."""
        key = self._signed_key(query)
        if key is None:
            self.counts.refused += 1
            return 403, {"error": "forbidden"}
        try:
            if len(raw) > MAX_DELIVERY_BYTES:
                raise ValueError("too large")
            remote = RemoteJob.from_json(jsontext.loads(raw))
        except (ValueError, MalformedJob) as exc:
            self.counts.malformed += 1
            log.info("webhook delivery that is not a job: %s", exc)
            return 400, {"error": "not a job"}
        if self.deliver(remote, key or None):
            self.counts.used += 1
        else:
            self.counts.ignored += 1
        return 200, {"ok": True}

    def _signed_key(self, query: Mapping[str, str]) -> str | None:
        """The key a delivery's address names, once its signature checks ("": an address of
        the secret alone, as earlier versions made; None: refused)."""
        key = query.get(KEY_PARAM)
        if key is not None:
            given = query.get(SIG_PARAM, "")
            good = hmac.compare_digest(given.encode(), signature(self.secret, key).encode())
            return key if good else None
        given = query.get(SECRET_PARAM, "")
        return "" if hmac.compare_digest(given.encode(), self.secret.encode()) else None

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_DELIVERY_BYTES)
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        return app


@contextlib.asynccontextmanager
async def receiving(settings: WebhookSettings, receiver: Receiver) -> AsyncIterator[HookAddress]:
    """Serve ``receiver`` on the listen address; yields where submits ask for reports."""
    from aiohttp import web

    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen for webhooks on {settings.host}:{settings.port}: {exc.strerror}"
            ) from exc
        log.info("taking webhooks on %s:%d", settings.host, settings.port)
        yield HookAddress(settings.public_url, receiver.secret)
    finally:
        await runner.cleanup()
