"""Cancelling a remote job and reading it back: a DELETE alone proves nothing.

It can race the job's end (a job that completed first is billed, and its DELETE refused) or
not take at all, so what a cancel did is read from the job itself: ``cancelled`` (not
billed), ended otherwise, or still running.
"""

from __future__ import annotations

import logging

import anyio

from runner.api.port import Api
from runner.api.remote import RemoteJob
from runner.engine.retry import Clock
from runner.errors import PermanentApiError, TransientApiError

log = logging.getLogger("runner.engine.tracker")
READ_BACKS = 3  # reads of a job after a DELETE the server accepted, until it shows an end


async def cancel(api: Api, clock: Clock, job_id: str) -> bool:
    """Ask the server to cancel a job; True when it said yes (not proof: ``withdraw``)."""
    with anyio.CancelScope(shield=True), clock.move_on_after(10):
        try:
            await api.cancel(job_id)
            return True
        except (TransientApiError, PermanentApiError) as exc:
            log.debug("could not cancel %s: %s", job_id, exc)
    return False


async def look(api: Api, job_id: str) -> RemoteJob | None:
    """The job as it stands now, in one GET (None: it could not be read)."""
    try:
        return await api.get_job(job_id)
    except (TransientApiError, PermanentApiError) as exc:
        log.debug("could not read job %s: %s", job_id, exc)
        return None


async def withdraw(api: Api, clock: Clock, job_id: str, pause: float) -> RemoteJob | None:
    """Cancel a job and read it back: the job as it stands after the DELETE (``cancelled``,
    or ended before the DELETE landed, or still running if the DELETE did not take), or None
    when it cannot be read. A job the server agreed to cancel is read again, ``pause``
    seconds apart, until it shows an end. Shielded: a run that is being stopped still
    learns whether its cancels took."""
    asked = await cancel(api, clock, job_id)
    with anyio.CancelScope(shield=True), clock.move_on_after(30):
        remote = None
        for read in range(READ_BACKS):
            remote = await look(api, job_id)
            if remote is not None and (remote.status.terminal or not asked):
                return remote
            if read + 1 < READ_BACKS:
                await clock.sleep(pause)
        return remote
    return None
