"""Where a run's webhook receiver hands each job's end: to whichever key follows the job, and
what a signed end says, the key the job is of. A job whose POST's answer was lost is told
apart from others by it (``runner.engine.lost_round`` and the collection of an ambiguous
job's candidates read ``key_of``). Whether deliveries arrive at all is judged here too
(``runner.engine.silence``): the trackers look at jobs awaiting one accordingly."""

from __future__ import annotations

import logging

from runner.api.remote import RemoteJob
from runner.engine.silence import Silence
from runner.engine.tracker import Tracker

log = logging.getLogger(__name__)

MAX_KNOWN = 100_000  # job ids whose key a delivery named, kept at most (the oldest go first)


class Deliveries:
    """The run's trackers, the key each signed delivery named, and whether deliveries come."""

    def __init__(self) -> None:
        self.trackers: list[Tracker] = []
        self._keys: dict[str, str] = {}  # job id → the key its delivery named
        self.silence = Silence()

    @property
    def trusted(self) -> bool:
        """Whether deliveries are known to arrive (looks are then a safety net)."""
        return self.silence.trusted

    def deliver(self, remote: RemoteJob, key: str | None = None) -> bool:
        """Learn ``remote``'s key (when its delivery named one) and wake the task following
        it; False when it told nothing new (not a job in flight, a repeat)."""
        if self.silence.arrived():
            if self.silence.warned:
                log.info("webhook deliveries arrive again: polls go back to the safety net")
            for tracker in self.trackers:
                tracker.retime(trusted=True)
        told = False
        if key is not None and remote.status.terminal and remote.job_id not in self._keys:
            if len(self._keys) >= MAX_KNOWN:
                del self._keys[next(iter(self._keys))]
            self._keys[remote.job_id] = key
            told = True
        woke = any(tracker.delivered(remote) for tracker in self.trackers)
        return woke or told

    def missed(self, now: float, poll_interval: float) -> None:
        """A job was seen ended by a look at ``now`` before its delivery came: when that
        confirms deliveries do not come, say so and look at jobs every ``poll_interval``."""
        was = self.silence.trusted
        said = self.silence.miss(now, poll_interval)
        if said is None:
            return
        log.log(logging.WARNING if said.warning else logging.INFO, "%s", said.text)
        if was:
            for tracker in self.trackers:
                tracker.retime(trusted=False)

    def key_of(self, job_id: str) -> str | None:
        """The key a delivery said ``job_id`` is of (None: no signed end of it came)."""
        return self._keys.get(job_id)
