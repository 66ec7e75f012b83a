"""``--budget``: the estimated spend a run may commit to, reserved before each POST."""

from __future__ import annotations

from runner.jobspec import JobSpec
from runner.money import dollars

UNITS = ("usd", "cu")


class Budget:
    """The spend this run has committed, in US dollars or compute units; a job reserves its
    price before it is sent.

    Reserving before the POST (not after its answer) keeps the cap exact while many POSTs
    are in flight. A job that turns out not to be billed (refused, failed, cancelled) gives
    its share back. Dollars and compute units are never mixed: a dollar budget refuses a job
    whose model has no USD price (a manifest's ``prices:`` can give it one).
    """

    __slots__ = ("committed", "limit", "unit")

    def __init__(self, limit: float | None, unit: str = "usd") -> None:
        if unit not in UNITS:
            raise ValueError(f"budget unit {unit!r} is not one of {UNITS}")
        self.limit = limit
        self.unit = unit
        self.committed = 0.0

    def price(self, spec: JobSpec) -> float | None:
        return spec.usd if self.unit == "usd" else spec.units

    def _text(self, amount: float) -> str:
        return dollars(amount) if self.unit == "usd" else f"{amount:g} CU"

    def reserve(self, spec: JobSpec) -> str | None:
        """Commit the job's price; returns why not when that would go over the limit."""
        price = self.price(spec)
        if self.limit is None:
            self.committed += price or 0.0
            return None
        if price is None:
            if self.unit == "usd":
                return (
                    f"{spec.model} has no published USD price, so --budget cannot cover it: "
                    f"set one in the manifest (prices: {{{spec.model}: 0.05}}) or give the "
                    "budget in compute units (500cu)"
                )
            return f"{spec.model} has no published price, so --budget cannot cover it"
        if self.committed + price > self.limit + 1e-9:
            return (
                f"{self._text(price)} would take the spend past the budget "
                f"({self._text(self.committed)} of {self._text(self.limit)} committed)"
            )
        self.committed += price
        return None

    def refund(self, spec: JobSpec) -> None:
        self.committed -= self.price(spec) or 0.0
