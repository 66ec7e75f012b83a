"""A base for tests' small fakes of the API: every call of the ``Api`` port, none expected.

A fake overrides the calls its test makes; one it does not expect fails the test by name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from runner.api.downloads import Download
from runner.api.remote import ListedJob, RemoteJob


class ApiStub:
    """An ``Api`` that expects nothing."""

    account = "stub0000"

    def __init__(self) -> None:
        self.requests_by: Counter[str] = Counter()

    def _unexpected(self, call: str) -> AssertionError:
        return AssertionError(f"{type(self).__name__} did not expect {call}")

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        webhook_url: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> RemoteJob:
        raise self._unexpected(f"POST {endpoint}")

    async def get_job(self, job_id: str) -> RemoteJob:
        raise self._unexpected(f"GET /jobs/{job_id}")

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        raise self._unexpected("GET /jobs")

    async def cancel(self, job_id: str) -> None:
        raise self._unexpected(f"DELETE /jobs/{job_id}")

    async def download(self, url: str, dest: Path) -> Download:
        raise self._unexpected(f"GET {url}")

    async def upload_asset(self, path: Path) -> str:
        raise self._unexpected("POST /assets")
