"""A job's outcome, recorded: a finished job's record journaled (``Done``) and handed to the
writer; one that continues in a later run counted, with why (``Unfinished``)."""

from __future__ import annotations

import logging

from runner.engine.accounts import KeyPool
from runner.engine.outcome import (
    Ambiguous,
    Cancelled,
    Completed,
    Deferred,
    Failed,
    NotSubmitted,
    Outcome,
)
from runner.jobspec import JobSpec
from runner.outputs.writers import Writer
from runner.state.events import Done
from runner.state.journal import Journal
from runner.state.ledger import NO_SINGLE_MATCH, KeyState
from runner.state.records import ambiguous_record, completed_record, failed_record
from runner.state.run_events import LeftOver, Unfinished

log = logging.getLogger("runner.engine.engine")
# A job's own outcome: a line in a log file, but on a terminal only with -v (the live view
# counts them, and `status` groups their reasons).
PER_JOB = {"per_job": True}


class Recorder:
    """Records each job's outcome (``again``: keys finished before, run again in this run)."""

    def __init__(
        self, journal: Journal, writer: Writer, pool: KeyPool, again: frozenset[str]
    ) -> None:
        self.journal = journal
        self.writer = writer
        self.pool = pool
        self.again = again

    async def record(self, spec: JobSpec, outcome: Outcome) -> None:
        """Record a finished job, or count one that will continue in a later run."""
        state = self.journal.ledger.state(spec.key)
        if isinstance(outcome, Completed):
            record = completed_record(
                spec, state, outcome.remote, outcome.files, outcome.noticed_at
            )
        elif isinstance(outcome, Failed):
            record = failed_record(spec, state, outcome.reason)
        elif isinstance(outcome, Ambiguous):
            why = state.doubt or NO_SINGLE_MATCH
            record = ambiguous_record(
                spec, state, outcome.candidates, outcome.files, why, paid=outcome.paid
            )
        else:
            self._count_unfinished(spec, state, outcome)
            return
        record = self.writer.assign(record)
        await self.journal.record(Done(spec.key, record))
        self.writer.finished(record, again=spec.key in self.again)
        if isinstance(outcome, Completed):
            files = len(outcome.files)
            plural = "" if files == 1 else "s"
            log.debug("← done %s %s (%d file%s)", spec.key, spec.model, files, plural)
        elif isinstance(outcome, Failed):
            log.warning("! failed %s %s: %s", spec.key, spec.model, outcome.reason, extra=PER_JOB)
        else:
            log.warning("? ambiguous %s %s: %s", spec.key, spec.model, record.error, extra=PER_JOB)

    def _count_unfinished(self, spec: JobSpec, state: KeyState, outcome: Outcome) -> None:
        if isinstance(outcome, Deferred):
            why = LeftOver.DEFERRED
            log.warning("… %s left for the next run: %s", spec.key, outcome.reason, extra=PER_JOB)
            if not state.settled and self.pool.several:
                holder = self.pool.opened(state.account)
                if holder is not None:
                    holder.held[outcome.reason] = holder.held.get(outcome.reason, 0) + 1
        elif isinstance(outcome, Cancelled):
            why = LeftOver.CANCELLED
            log.debug("× cancelled %s (job %s) as the run stopped", spec.key, outcome.job_id)
        elif isinstance(outcome, NotSubmitted) and (outcome.over_budget or outcome.unpriced):
            why = LeftOver.OVER_BUDGET if outcome.over_budget else LeftOver.UNPRICED
            log.debug("$ not submitting %s: %s", spec.key, outcome.reason)
        else:
            why = LeftOver.NOT_STARTED
        self.journal.note(Unfinished(spec.key, why))
