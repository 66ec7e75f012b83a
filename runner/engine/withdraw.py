"""Cancelling a remote job and reading it back: a DELETE alone proves nothing.

It can race the job's end (a job that completed first is billed, and its DELETE refused),
fail on the way (a 5xx or a dropped connection: it is sent again), or not take at all, so
what a cancel did is read from the job itself: ``cancelled`` (not billed), ended otherwise,
or still running.
"""

from __future__ import annotations

import enum
import logging

import anyio

from runner.api.port import Api
from runner.api.remote import RemoteJob
from runner.engine.retry import Clock
from runner.errors import PermanentApiError, TransientApiError

log = logging.getLogger("runner.engine.tracker")
TRIES = 4  # DELETEs sent or reads made after one, until the job shows an end
RESEND_PAUSE = 0.5  # seconds before a DELETE that failed on the way is sent again
BOUND = 30.0  # seconds a withdrawal may take in all


class Asked(enum.Enum):
    """What became of one DELETE."""

    TAKEN = "taken"  # the server said yes
    REFUSED = "refused"  # the server said no (ended, unknown): sending it again changes nothing
    FAILED = "failed"  # no answer or a 5xx: it may not have reached the job


async def cancel(api: Api, clock: Clock, job_id: str) -> Asked:
    """Ask the server to cancel a job once (not proof: ``withdraw``)."""
    with anyio.CancelScope(shield=True), clock.move_on_after(10):
        try:
            await api.cancel(job_id)
            return Asked.TAKEN
        except PermanentApiError as exc:
            log.debug("cancel of %s refused: %s", job_id, exc)
            return Asked.REFUSED
        except TransientApiError as exc:
            log.debug("cancel of %s failed: %s", job_id, exc)
    return Asked.FAILED


async def look(api: Api, job_id: str) -> RemoteJob | None:
    """The job as it stands now, in one GET (None: it could not be read)."""
    try:
        return await api.get_job(job_id)
    except (TransientApiError, PermanentApiError) as exc:
        log.debug("could not read job %s: %s", job_id, exc)
        return None


async def withdraw(api: Api, clock: Clock, job_id: str, pause: float) -> RemoteJob | None:
    """Cancel a job and read it back: the job as it stands after the DELETE (``cancelled``,
    or ended before the DELETE landed, or still running if it did not take), or None when
    it cannot be read. A DELETE that failed on the way is sent again while the job runs; one
    the server took is followed by reads ``pause`` seconds apart until the job shows an end.
    Shielded: a run that is being stopped still learns whether its cancels took."""
    with anyio.CancelScope(shield=True), clock.move_on_after(BOUND):
        remote = None
        asked = Asked.FAILED
        for attempt in range(TRIES):
            if asked is Asked.FAILED:
                asked = await cancel(api, clock, job_id)
            remote = await look(api, job_id)
            ended = remote is not None and remote.status.terminal
            if ended or asked is Asked.REFUSED or attempt + 1 == TRIES:
                return remote
            await clock.sleep(pause if asked is Asked.TAKEN else RESEND_PAUSE)
        return remote
    return None
