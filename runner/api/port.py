"""The API as the engine sees it: what a run asks of Krea (or of anything that answers like it).

``KreaClient`` implements it over HTTP; tests give in-memory fakes that satisfy it as they are.
Errors are ``runner.errors``' (module docstring of ``runner.api.client``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from runner.api.downloads import Download
from runner.api.remote import ListedJob, RemoteJob


class Api(Protocol):
    """One key's view of the API."""

    @property
    def account(self) -> str:
        """The key's fingerprint, as logs and the journal name it."""
        ...

    @property
    def requests_by(self) -> Counter[str]:
        """Requests sent, by kind: submit, list, job, cancel, asset, download."""
        ...

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        webhook_url: str | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> RemoteJob:
        """POST a job; AmbiguousSubmit when it may exist although no id came back."""
        ...

    async def get_job(self, job_id: str) -> RemoteJob: ...

    async def list_jobs(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[ListedJob], str | None]:
        """One page of the account's jobs, newest first, and the next page's cursor."""
        ...

    async def cancel(self, job_id: str) -> None: ...

    async def download(self, url: str, dest: Path) -> Download:
        """Stream an image into ``dest``, checked as it comes."""
        ...

    async def upload_asset(self, path: Path) -> str:
        """Upload a local file; the URL requests may use."""
        ...
