"""The server's clock against ours, as one object a run keeps: told every ``Date`` an answer
carries and every submit answered with its job's ``created_at`` (``runner.api.skew``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from runner.api.skew import DATE_PRECISION, ClockSkew


class Reading:
    """The Date headers of answers to requests sent since ``since`` (our clock)."""

    __slots__ = ("after", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.after = ClockSkew()  # their bounds joined: what survives a jump among them


class ServerClock:
    """Bounds on (server clock - ours), live for the run (the journal keeps what submits
    proved, so a run starts from the last one's)."""

    def __init__(self, skew: ClockSkew | None = None) -> None:
        self.skew = skew or ClockSkew()
        self.dated_once = False  # an answer's Date was read in this run
        self._readings: list[Reading] = []

    def start_from(self, journaled: ClockSkew) -> None:
        """The journal's bounds, from earlier runs' answered submits."""
        self.skew = self.skew.follow(journaled) if journaled.measured else self.skew

    def dated(self, sent: float, received: float, server: float) -> None:
        """An answer to a request sent at ``sent`` came back at ``received`` dated ``server``."""
        seen = ClockSkew.between(sent, received, server, DATE_PRECISION)
        if seen is None:
            return  # our own clock went back during the request: it says nothing
        self.skew = self.skew.follow(seen)
        self.dated_once = True
        for reading in self._readings:
            if sent >= reading.since:
                reading.after = reading.after.hull(seen)

    def answered(self, sent: float, received: float, created: float | None) -> None:
        """A submit sent and answered then holds a job stamped ``created`` (server clock)."""
        if created is not None:
            self.skew = self.skew.observe(sent, received, created)

    @contextlib.contextmanager
    def reading(self, since: float) -> Iterator[Reading]:
        """Collect the Dates of answers to requests sent from ``since`` on, for the block."""
        reading = Reading(since)
        self._readings.append(reading)
        try:
            yield reading
        finally:
            self._readings.remove(reading)
