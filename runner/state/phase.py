"""Where a job stands: one value, set by the fold alone (``runner.state.ledger``)."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """A job's phase, as its journal lines leave it."""

    NEW = "new"  # nothing of it is at the server: the next POST pays once
    SUBMITTING = "submitting"  # a POST went out and its answer is not known
    RUNNING = "running"  # a remote job is ours: poll it (and fetch its images), never resend
    AMBIGUOUS = "ambiguous"  # a lost answer matched no single job: its candidates are kept
    DONE = "done"  # its record is written (completed, or ambiguous with candidates collected)
    FAILED = "failed"  # its record is written, without images

    @property
    def finished(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED)
