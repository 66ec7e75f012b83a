"""How one job ends in a run: outcomes are returned values, never exceptions."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.api.remote import RemoteJob
from runner.state.records import FileEntry


@dataclass(frozen=True, slots=True)
class Completed:
    """The job's images are in place."""

    remote: RemoteJob
    files: list[FileEntry]
    noticed_at: float | None = None  # when the run learnt the job had ended (our clock)


@dataclass(frozen=True, slots=True)
class Failed:
    """The job ends without images (failed jobs are not billed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """A submit's answer was lost and more than one remote job could be it: not sent again.

    The candidates' images were paid for, so the ones that completed are kept apart.
    """

    candidates: tuple[str, ...]
    files: list[FileEntry] = field(default_factory=list)
    paid: int = 0  # the candidates this job collected that completed: billed


@dataclass(frozen=True, slots=True)
class Deferred:
    """The job cannot finish in this run but nothing is lost: the next run picks it up."""

    reason: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The run stopped with --cancel-on-exit and cancelled the job; the next run submits it."""

    job_id: str


@dataclass(frozen=True, slots=True)
class NotSubmitted:
    """The job was never sent: the run is stopping, or it would go over the budget."""

    reason: str
    over_budget: bool = False
    unpriced: bool = False  # its model has no price in the budget's unit


Outcome = Completed | Failed | Ambiguous | Deferred | Cancelled | NotSubmitted


@dataclass(frozen=True, slots=True)
class Sent:
    """A submit the server holds as ``job_id``: follow it (never send it again)."""

    job_id: str
    sent: float | None = None  # when its POST went out (our wall clock)
    answered: float | None = None  # when it was answered: the job existed by then
    backlogged: bool = False  # its answer said it waits in the account's backlog


@dataclass(frozen=True, slots=True)
class Doubted:
    """A submit whose answer was lost and that no single listed job proves: its candidates
    are the journal's, to collect."""

    why: str


@dataclass(frozen=True, slots=True)
class Requeued:
    """Not sent: its key's cap came down since the job was given a slot (more of our jobs
    wait in the account's backlog than its margin); it waits for room again."""


Submission = Sent | Doubted | Requeued | Outcome


@dataclass(frozen=True, slots=True)
class Overdue:
    """A job seen still queued or running (``status``) far past the time its model's jobs
    take: a straggler, to cancel and send again."""

    job_id: str
    status: str
