"""Receiving Krea's webhooks: a small aiohttp server inside the run.

Each submit carries ``X-Webhook-URL``: the public address given with ``--webhook-url`` plus a
secret made for this run (a query parameter, which proxies pass on unchanged). A delivery
whose secret does not match is refused; one for a job in flight wakes that job at once; the
rest (repeats, late ones, jobs of other runs) are answered 200 and ignored, so the sender does
not try again. Polling goes on slowly beside it, so a lost delivery never strands a job.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:  # the server side of aiohttp is loaded only by a run that takes webhooks
    from aiohttp import web

from runner import jsontext
from runner.api.remote import MalformedJob, RemoteJob
from runner.errors import UsageError
from runner.integers import parse_int

log = logging.getLogger(__name__)

SECRET_PARAM = "krea_batch_secret"
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
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), (SECRET_PARAM, secret)]
    return urlunsplit(parts._replace(query=urlencode(query)))


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

    deliver: Callable[[RemoteJob], bool]
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    counts: DeliveryCounts = field(default_factory=DeliveryCounts)

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        given = request.query.get(SECRET_PARAM, "")
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            self.counts.refused += 1
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            raw = await request.content.read(MAX_DELIVERY_BYTES + 1)
            if len(raw) > MAX_DELIVERY_BYTES:
                raise ValueError("too large")
            remote = RemoteJob.from_json(jsontext.loads(raw))
        except (ValueError, MalformedJob) as exc:
            self.counts.malformed += 1
            log.info("webhook delivery that is not a job: %s", exc)
            return web.json_response({"error": "not a job"}, status=400)
        if self.deliver(remote):
            self.counts.used += 1
        else:
            self.counts.ignored += 1
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_DELIVERY_BYTES)
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        return app


@contextlib.asynccontextmanager
async def receiving(settings: WebhookSettings, receiver: Receiver) -> AsyncIterator[str]:
    """Serve ``receiver`` on the listen address; yields the URL to send as X-Webhook-URL."""
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
        yield with_secret(settings.public_url, receiver.secret)
    finally:
        await runner.cleanup()
