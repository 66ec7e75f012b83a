"""Whether a run's webhook deliveries arrive, judged from what it sees: any delivery proves the
address works; jobs seen ended by a look (a poll, the listing) without theirs count against
it. Pure: no clock, no I/O (``runner.engine.deliveries`` acts on it).

Until a first delivery arrives, a job awaiting one is looked at as in a run without webhooks,
so an address Krea cannot reach costs no time; once one arrives, looks slow to the safety
net. MISSES jobs in a row seen ended without theirs, over GRACE seconds at least (a delivery
may trail its job's end being seen), mean that deliveries do not come: the run says so (a
warning, once) and looks at the poll interval again until a delivery arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

MISSES = 3  # jobs in a row seen ended without their delivery
GRACE = 5.0  # seconds from the first of them to the one that confirms the silence, at least
ADVICE = "check --webhook-url (it must reach --webhook-listen from Krea's servers)"


@dataclass(frozen=True, slots=True)
class Said:
    """What to tell the user of a silence: ``warning`` the first time, else for the record."""

    text: str
    warning: bool


class Silence:
    """Deliveries heard, and the jobs seen ended without theirs since the last one."""

    def __init__(self) -> None:
        self.trusted = False  # a delivery arrived, and no silence was confirmed since
        self.heard = 0  # deliveries arrived in this run
        self.missed = 0  # jobs seen ended without their delivery, in this run
        self.warned = False
        self._streak = 0  # jobs seen ended without theirs since the last delivery
        self._first = 0.0  # when the first of them was (monotonic)
        self._confirmed = False  # the streak was said to be a silence

    @property
    def confirmed(self) -> bool:
        """Whether deliveries are known not to come (since the last one, if any)."""
        return self._confirmed

    def arrived(self) -> bool:
        """A delivery came; True when this turns looks back to the safety net's rhythm."""
        self.heard += 1
        self._streak = 0
        self._confirmed = False
        turned = not self.trusted
        self.trusted = True
        return turned

    def miss(self, now: float, poll_interval: float) -> Said | None:
        """A job awaiting its delivery was seen ended without it at ``now``; what to say when
        this confirms that deliveries do not come (looks then follow ``poll_interval``)."""
        self.missed += 1
        self._streak += 1
        if self._streak == 1:
            self._first = now
        if self._confirmed or self._streak < MISSES or now - self._first < GRACE:
            return None
        self._confirmed = True
        self.trusted = False
        if self.heard:
            what = f"for the last {self._streak} jobs that ended ({self.heard} arrived before)"
        else:
            what = f"for {self._streak} jobs that ended"
        text = (
            f"no webhook delivery has arrived {what}: {ADVICE}; "
            f"polling every {poll_interval:g} s meanwhile"
        )
        warning = not self.warned
        self.warned = True
        return Said(text, warning)
