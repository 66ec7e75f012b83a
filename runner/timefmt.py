"""Times as the API and our files write them: ISO 8601 in UTC with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(timestamp: float | None) -> str | None:
    """``2026-11-24T01:59:22.220Z`` from seconds since the epoch (None stays None)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
