"""Where a run's webhook receiver hands each job's end: to whichever key follows the job, and
what a signed end says, the key the job is of. A job whose POST's answer was lost is told
apart from others by it (``runner.engine.lost_round`` and the collection of an ambiguous
job's candidates read ``key_of``)."""

from __future__ import annotations

from runner.api.remote import RemoteJob
from runner.engine.tracker import Tracker

MAX_KNOWN = 100_000  # job ids whose key a delivery named, kept at most (the oldest go first)


class Deliveries:
    """The run's trackers, and the key each signed delivery named."""

    def __init__(self) -> None:
        self.trackers: list[Tracker] = []
        self._keys: dict[str, str] = {}  # job id → the key its delivery named

    def deliver(self, remote: RemoteJob, key: str | None = None) -> bool:
        """Learn ``remote``'s key (when its delivery named one) and wake the task following
        it; False when it told nothing new (not a job in flight, a repeat)."""
        told = False
        if key is not None and remote.status.terminal and remote.job_id not in self._keys:
            if len(self._keys) >= MAX_KNOWN:
                del self._keys[next(iter(self._keys))]
            self._keys[remote.job_id] = key
            told = True
        woke = any(tracker.delivered(remote) for tracker in self.trackers)
        return woke or told

    def key_of(self, job_id: str) -> str | None:
        """The key a delivery said ``job_id`` is of (None: no signed end of it came)."""
        return self._keys.get(job_id)
