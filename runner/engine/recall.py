"""Cancelling a job of ours so that its key may be sent again, without ever paying twice.

A DELETE is not proof: it can race the job's end (a job that completed first is billed, and
its DELETE is refused) or not take at all. So every cancel is followed by reading the job
back (``Tracker.withdraw``), and only a job read back ``cancelled`` is journaled as such
(``JobCancelled``): the fold then frees its key, and the next POST pays once. A job that
ended first is handed back to be collected like any other; one still running goes on
being followed.
"""

from __future__ import annotations

import logging

from runner.api.remote import JobStatus, RemoteJob
from runner.engine.accounts import Account
from runner.engine.budget import Budget
from runner.jobspec import JobSpec
from runner.state.events import JobCancelled
from runner.state.journal import Journal
from runner.state.ledger import KeyState

log = logging.getLogger("runner.engine.engine")


class Recalls:
    """Cancels jobs of this folder's keys and journals the cancels that took."""

    def __init__(self, journal: Journal, budget: Budget, started: float) -> None:
        self.journal = journal
        self.budget = budget
        self.started = started  # the run's start: a job sent since reserved its price in it

    async def recall(
        self, account: Account, spec: JobSpec, state: KeyState, job_id: str, why: str
    ) -> RemoteJob | None:
        """Cancel ``job_id`` (the key's current job) and read it back: the job as read (None:
        unreadable). Read back cancelled, it is journaled so and its price given back."""
        sent_now = state.submitted_at is not None and state.submitted_at >= self.started
        back = await account.tracker.withdraw(job_id)
        if back is None or back.status != JobStatus.CANCELLED:
            status = "unreadable" if back is None else back.status.value
            log.info("× job %s of %s was not cancelled (%s): %s", job_id, spec.key, why, status)
            return back
        await self.journal.record(JobCancelled(spec.key, state.attempts, job_id, why))
        if sent_now:
            await self.budget.refund(spec)  # cancelled jobs are not billed
        log.debug("× cancelled %s's job %s (%s), read back cancelled", spec.key, job_id, why)
        return back
