"""The results record of a job: what results.jsonl holds and the journal's `done` carries."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from runner.jobspec import JobSpec
from runner.journal import KeyState
from runner.remote import RemoteJob
from runner.timefmt import iso_time


class RecordStatus(StrEnum):
    """How a job ended, as results.jsonl and the journal write it."""

    COMPLETED = "completed"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"  # its answer was lost and no listing could tell which job it made


def _base(spec: JobSpec, state: KeyState) -> dict[str, Any]:
    return {**spec.describe(), "job_id": state.job_id, "attempts": state.attempts}


def completed_record(
    spec: JobSpec,
    state: KeyState,
    remote: RemoteJob,
    files: list[dict[str, Any]],
    noticed_at: float | None = None,
) -> dict[str, Any]:
    """A finished job with its files; cost is the catalog's estimate in compute units.

    ``noticed_at``: when the run learnt that the job had ended, so its downloads began."""
    seconds = None
    if remote.created_at is not None and remote.completed_at is not None:
        seconds = round(remote.completed_at - remote.created_at, 3)
    return {
        **_base(spec, state),
        "job_id": remote.job_id,
        "status": RecordStatus.COMPLETED.value,
        "files": files,
        "error": None,
        "timings": {
            "submitted_at": iso_time(state.submitted_at),
            "created_at": iso_time(remote.created_at),
            "completed_at": iso_time(remote.completed_at),
            "noticed_at": iso_time(noticed_at),
            "seconds": seconds,
        },
        "cost_units": spec.units,
        "cost_usd": spec.usd,
    }


def ambiguous_record(
    spec: JobSpec,
    state: KeyState,
    candidates: tuple[str, ...],
    files: list[dict[str, Any]],
) -> dict[str, Any]:
    """A job whose submit's answer was lost and could not be told apart from other jobs.

    It was not sent again (that could pay twice); the candidates' images, paid for, are kept
    under images/_unmatched/ and listed in ``files``.
    """
    return {
        **_base(spec, state),
        "job_id": None,
        "status": RecordStatus.AMBIGUOUS.value,
        "files": files,
        "candidates": list(candidates),
        "error": (
            f"a submit's answer was lost and {len(candidates)} remote job(s) could be it "
            f"({', '.join(candidates) or 'none listed'}); not sent again, to never pay twice"
        ),
        "timings": {"submitted_at": iso_time(state.submitted_at)},
        "cost_units": 0.0,
    }


def failed_record(spec: JobSpec, state: KeyState, reason: str) -> dict[str, Any]:
    """A job that ended without images; failed jobs are not billed."""
    return {
        **_base(spec, state),
        "status": RecordStatus.FAILED.value,
        "files": [],
        "error": reason,
        "timings": {"submitted_at": iso_time(state.submitted_at)},
        "cost_units": 0.0,
    }
