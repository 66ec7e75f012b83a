"""Uploading the local reference images a job names, once per file across runs."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from runner.api.port import Api
from runner.engine.outcome import Failed
from runner.engine.retry import Clock, RetryPolicy, retrying
from runner.errors import PermanentApiError, TransientApiError
from runner.jobspec import JobSpec
from runner.manifest.assets import resolved, stand_ins
from runner.state.events import Asset
from runner.state.journal import Journal

log = logging.getLogger(__name__)


class Uploads:
    """Turns a job's stand-ins into URLs, uploading each file the journal does not know yet.

    The journal records each upload (``asset`` events, by sha256) before any job uses its URL,
    so a resume, or a job naming the same file, never uploads it again; two jobs needing the
    same new file at once wait for one upload.
    """

    def __init__(
        self,
        client: Api,
        journal: Journal,
        clock: Clock,
        retry: RetryPolicy,
        files: Mapping[str, Path],
        rng: random.Random,
    ) -> None:
        self.client = client
        self.journal = journal
        self.clock = clock
        self.retry = retry
        self.files = files
        self.rng = rng
        self._locks: dict[str, anyio.Lock] = {}

    async def body_for(self, spec: JobSpec) -> Mapping[str, Any] | Failed:
        """The body to send: every stand-in replaced by its file's URL (or why not)."""
        needed = stand_ins(spec.body)
        if not needed:
            return spec.body
        known = self.journal.ledger.assets
        for digest in sorted(needed - known.keys()):
            problem = await self._upload(digest)
            if problem is not None:
                return Failed(problem)
        return dict(resolved(spec.body, known.__getitem__))

    async def _upload(self, digest: str) -> str | None:
        """Upload one file unless it is known by now; returns why it could not be."""
        lock = self._locks.setdefault(digest, anyio.Lock())
        async with lock:
            if digest in self.journal.ledger.assets:
                return None
            path = self.files.get(digest)
            if path is None:
                return f"no local file with sha256 {digest} is named in the manifest"
            try:
                url = await retrying(
                    functools.partial(self.client.upload_asset, path),
                    self.retry,
                    self.clock,
                    self.rng,
                )
            except (TransientApiError, PermanentApiError) as exc:
                return f"uploading {path}: {exc}"
            except OSError as exc:
                return f"reading {path}: {exc.strerror or exc}"
            await self.journal.record(Asset(digest, url))
            log.debug("↑ uploaded %s as %s", path, url)
            return None
