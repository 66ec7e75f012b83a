"""Tracking a remote job: polling until it ends, then downloading its images into place."""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass, field, replace

import anyio

from runner.backoff import jittered
from runner.client import KreaClient
from runner.engine.counts import Counts
from runner.engine.outcome import Deferred, Failed, FileEntry
from runner.engine.retry import Clock, RetryPolicy, retrying
from runner.errors import ExpiredUrl, PermanentApiError, TransientApiError
from runner.outputs import OutputFolder, image_extension, relative
from runner.remote import RemoteJob

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrackSettings:
    """How jobs are followed."""

    poll_interval: float = 2.0
    job_timeout: float = 3 * 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Tracker:
    """Polls jobs and downloads their results."""

    def __init__(
        self,
        client: KreaClient,
        folder: OutputFolder,
        clock: Clock,
        settings: TrackSettings,
        *,
        counts: Counts,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.folder = folder
        self.clock = clock
        self.settings = settings
        self.counts = counts
        self.rng = rng or random.Random()
        # Polls of a paid job never give up on errors before the job's own deadline.
        self._poll_retry = replace(settings.retry, max_errors=None)

    def _count_error(self, exc: TransientApiError, delay: float) -> None:
        self.counts.saw(exc)

    async def wait(self, job_id: str) -> RemoteJob | Failed | Deferred:
        """Poll every poll_interval (jittered) until the job ends or its timeout passes."""
        deadline = self.clock.monotonic() + self.settings.job_timeout
        while True:
            await self.clock.sleep(jittered(self.settings.poll_interval, rng=self.rng))
            try:
                remote = await retrying(
                    lambda: self.client.get_job(job_id),
                    self._poll_retry,
                    self.clock,
                    self.rng,
                    on_error=self._count_error,
                    give_up_at=deadline,
                )
            except TransientApiError as exc:
                # Paid for and perhaps finished: keep it for the next run rather than fail it.
                return Deferred(f"no usable answer about job {job_id} before its timeout: {exc}")
            except PermanentApiError as exc:
                return Failed(f"the remote job {job_id} is gone: {exc}")
            if remote.status.terminal:
                return remote
            if self.clock.monotonic() > deadline:
                await self.cancel(job_id)
                return Failed(
                    f"timed out after {self.settings.job_timeout:g} s "
                    f"(last status: {remote.status.value}); cancelled"
                )

    async def cancel(self, job_id: str) -> bool:
        """Ask the server to cancel a job; True when it said yes."""
        with anyio.move_on_after(10, shield=True):
            try:
                await self.client.cancel(job_id)
                return True
            except (TransientApiError, PermanentApiError) as exc:
                log.info("could not cancel %s: %s", job_id, exc)
        return False

    async def download_all(
        self, remote: RemoteJob, stem: str, partial: str
    ) -> list[FileEntry] | Deferred:
        """Every result of ``remote`` into images/STEM(-N).ext, each atomically.

        ``partial`` names the hidden file a download is streamed into (unique per job).
        """
        files = []
        for index in range(len(remote.urls)):
            suffix = "" if index == 0 else f"-{index}"
            got = await self._download_one(remote, index, stem + suffix, partial + suffix)
            if isinstance(got, Deferred):
                return got
            remote, entry = got
            files.append(entry)
        return files

    async def _download_one(
        self, remote: RemoteJob, index: int, stem: str, partial_name: str
    ) -> tuple[RemoteJob, FileEntry] | Deferred:
        partial = self.folder.partial_path(partial_name)
        refreshes = 0
        while True:
            url = remote.urls[index]
            try:
                download = await retrying(
                    functools.partial(self.client.download, url, partial),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=self._count_error,
                )
                break
            except ExpiredUrl as exc:
                refreshes += 1
                if refreshes > (self.settings.retry.max_errors or 8):
                    return Deferred(f"its image URLs keep expiring: {exc}")
                log.info("↻ job %s's image URL expired: fetching the job again", remote.job_id)
                try:
                    remote = await retrying(
                        functools.partial(self.client.get_job, remote.job_id),
                        self.settings.retry,
                        self.clock,
                        self.rng,
                        on_error=self._count_error,
                    )
                except (TransientApiError, PermanentApiError) as refresh_error:
                    return Deferred(f"could not refresh its image URLs: {refresh_error}")
                if len(remote.urls) <= index:
                    return Deferred("the job no longer lists its images")
            except TransientApiError as exc:
                return Deferred(f"download kept failing: {exc}")
        name = stem + image_extension(download.content_type, url)
        final = await anyio.to_thread.run_sync(self.folder.place, partial, name)
        self.counts.downloads += 1
        self.counts.bytes += download.bytes
        entry = {
            "path": relative(final, self.folder.root),
            "sha256": download.sha256,
            "bytes": download.bytes,
        }
        return remote, entry
