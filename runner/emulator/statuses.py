"""The statuses of the emulator's jobs, as Krea's spec lists them, written on the server's side.

Deliberately not the client's enum (``runner.api.remote``): a misreading of the API shared by
both would be mirrored by the emulator instead of caught by the tests that run against it.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's status in the order a job lives through them."""

    BACKLOGGED = "backlogged"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    SAMPLING = "sampling"
    INTERMEDIATE_COMPLETE = "intermediate-complete"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
