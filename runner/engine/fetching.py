"""Fetching a completed job's images: each downloaded, checked and placed atomically, its
URLs fetched again from the job when they expire or bring something that is no image."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from runner.api.port import Api
from runner.api.remote import RemoteJob
from runner.engine.latency import TrackSettings
from runner.engine.outcome import Deferred, Failed
from runner.engine.retry import Clock, retrying
from runner.errors import BadImage, DiskError, ExpiredUrl, PermanentApiError, TransientApiError
from runner.outputs import FileEntry
from runner.outputs.writers import Fetched, Writer
from runner.state.run_events import Downloaded, RunEvent, TransientError

log = logging.getLogger("runner.engine.tracker")


class Fetcher:
    """Downloads the results of a key's completed jobs (the base of its ``Tracker``)."""

    def __init__(
        self,
        client: Api,
        writer: Writer,
        clock: Clock,
        settings: TrackSettings,
        *,
        note: Callable[[RunEvent], None],
        rng: random.Random,
    ) -> None:
        self.client = client
        self.writer = writer
        self.clock = clock
        self.settings = settings
        self.note = note
        self.rng = rng

    def _saw(self, exc: TransientApiError) -> None:
        self.note(TransientError(exc.status, exc.overload))

    def _count_error(self, exc: TransientApiError, delay: float) -> None:
        self._saw(exc)

    def _download_error(self, job_id: str, exc: TransientApiError, delay: float) -> None:
        self._saw(exc)
        log.debug("↻ job %s's download again in %.1f s: %s", job_id, delay, exc)

    async def _fresh_urls(self, remote: RemoteJob, index: int) -> RemoteJob | Deferred:
        """The job fetched again, for result URLs that work (or a reason why not)."""
        try:
            remote = await retrying(
                functools.partial(self.client.get_job, remote.job_id),
                self.settings.retry,
                self.clock,
                self.rng,
                on_error=self._count_error,
            )
        except (TransientApiError, PermanentApiError) as exc:
            return Deferred(f"could not refresh its image URLs: {exc}")
        if len(remote.urls) <= index:
            return Deferred("the job no longer lists its images")
        return remote

    async def download_all(
        self,
        remote: RemoteJob,
        stem: str,
        partial_name: str,
        provenance: Mapping[str, Any] | None = None,
    ) -> list[FileEntry] | Deferred | Failed:
        """Every result of ``remote`` into images/STEM(-N).ext, each atomically.

        ``partial_name`` names the hidden file a download is streamed into (unique per job);
        ``provenance`` is written into each image (runner.outputs.provenance) before it is placed.
        """
        if provenance is not None:
            provenance = {**provenance, "job_id": remote.job_id}
            if provenance.get("seed") is None and remote.seed is not None:
                provenance["server_seed"] = remote.seed  # none was sent: the one it chose
        files = []
        limit = self.settings.job_timeout
        deadline = self.clock.monotonic() + limit
        with self.clock.move_on_after(limit):  # tries included: a trickle cannot hold the job
            for index in range(len(remote.urls)):
                suffix = "" if index == 0 else f"-{index}"
                got = await self._download_one(
                    remote, index, stem + suffix, partial_name + suffix, provenance, deadline
                )
                if isinstance(got, Deferred | Failed):
                    return got
                remote, entry = got
                files.append(entry)
            return files
        log.warning("… job %s's images did not arrive within %g s", remote.job_id, limit)
        return Deferred(f"its images did not arrive within the job timeout ({limit:g} s)")

    async def _download_one(
        self,
        remote: RemoteJob,
        index: int,
        stem: str,
        partial_name: str,
        provenance: Mapping[str, Any] | None,
        deadline: float,
    ) -> tuple[RemoteJob, FileEntry] | Deferred | Failed:
        part = self.writer.partial_path(partial_name)
        refreshes = bad_images = 0
        while True:
            url = remote.urls[index]
            try:
                download = await retrying(
                    functools.partial(self.client.download, url, part),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=functools.partial(self._download_error, remote.job_id),
                    give_up_at=deadline,
                )
                fetched = Fetched(
                    download.path,
                    download.sha256,
                    download.bytes,
                    download.content_type,
                    url,
                    download.data,
                )
                try:
                    entry = await anyio.to_thread.run_sync(
                        self.writer.place, fetched, stem, provenance
                    )
                except OSError as exc:  # the disk, not the image: ours to stop for
                    raise DiskError(str(part.parent), exc) from exc
                break
            except BadImage as exc:
                bad_images += 1
                if bad_images > 1:  # fetched again, and again not an image
                    return Failed(str(exc))
                log.debug("↻ job %s's image is unusable: fetching the job again", remote.job_id)
            except ExpiredUrl as exc:
                refreshes += 1
                if refreshes > (self.settings.retry.max_errors or 8):
                    return Deferred(f"its image URLs keep expiring: {exc}")
                log.debug("↻ job %s's image URL expired: fetching the job again", remote.job_id)
            except TransientApiError as exc:
                return Deferred(f"download kept failing: {exc}")
            except PermanentApiError as exc:  # an unusable URL: fetching the job gives it again
                return Deferred(f"cannot download its image: {exc}")
            fresh = await self._fresh_urls(remote, index)
            if isinstance(fresh, Deferred):
                return fresh
            remote = fresh
        self.note(Downloaded(download.bytes))
        return remote, entry
