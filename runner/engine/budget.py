"""``--budget``: the estimated spend a run may commit to, reserved before each POST."""

from __future__ import annotations


class Budget:
    """Compute units this run has committed; a job reserves its price before it is sent.

    Reserving before the POST (not after its answer) keeps the cap exact while many POSTs
    are in flight. A job that turns out not to be billed (refused, failed, cancelled) gives
    its share back.
    """

    __slots__ = ("committed", "limit")

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.committed = 0.0

    def reserve(self, model: str, units: float | None) -> str | None:
        """Commit ``units``; returns why not when that would go over the limit."""
        if self.limit is None:
            self.committed += units or 0.0
            return None
        if units is None:
            return f"{model} has no published price, so --budget cannot cover it"
        if self.committed + units > self.limit + 1e-9:
            return (
                f"{units:g} CU would take the spend past the budget "
                f"({self.committed:g} of {self.limit:g} CU committed)"
            )
        self.committed += units
        return None

    def refund(self, units: float | None) -> None:
        self.committed -= units or 0.0
