"""``--budget``: the estimated spend a run may commit to, reserved before each POST."""

from __future__ import annotations

from collections.abc import Mapping

from runner.jobspec import JobSpec
from runner.money import dollars
from runner.wording import counted

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
    whose = ""  # whose spend the limit caps, as a refusal says it (the shared one: every shard's)

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

    def covers(self, spec: JobSpec) -> bool:
        """Whether the budget can price the job at all (a dollar budget cannot price a model
        with no published USD price)."""
        return self.limit is None or self.price(spec) is not None

    async def reserve(self, spec: JobSpec) -> str | None:
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
        committed = await self._commit(spec, price)
        if committed is not None:
            return (
                f"{self._text(price)} would take the spend past the budget "
                f"({self._text(committed)} of {self._text(self.limit)} committed{self.whose})"
            )
        return None

    async def _commit(self, spec: JobSpec, price: float) -> float | None:
        """Add ``price`` to what is committed if it fits the limit; else what is committed."""
        assert self.limit is not None
        if self.committed + price > self.limit + 1e-9:
            return self.committed
        self.committed += price
        return None

    async def refund(self, spec: JobSpec) -> None:
        """The job was not billed (never created, failed or cancelled): its price is free."""
        self.committed -= self.price(spec) or 0.0


def cannot_price(unpriced: Mapping[str, int]) -> str:
    """What to tell of the jobs (by model) a dollar budget cannot price."""
    models = ", ".join(f"{model} ({counted(n, 'job')})" for model, n in sorted(unpriced.items()))
    verb = "has" if len(unpriced) == 1 else "have"
    return (
        f"--budget is in dollars and {models} {verb} no published USD price: those jobs are "
        f"not sent; give a price in the manifest (prices: {{{min(unpriced)}: 0.05}}) or the "
        "budget in compute units (--budget 500cu)"
    )
