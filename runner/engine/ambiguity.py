"""What sending ambiguous jobs again could cost: the worst case, said before anything is sent.

A job is ambiguous when a submit's answer was lost and the listing could not prove which
remote job, if any, it created. Sending it again pays twice for every one of those jobs that
did create one. That is at most one image per remote job that could be theirs (a candidate),
plus one per job whose window the listing could not read whole (its job may be unlisted),
and never more than the number of ambiguous jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runner.money import dollars
from runner.state.ledger import NO_SINGLE_MATCH, KeyState
from runner.state.records import RecordStatus
from runner.wording import them


def is_ambiguous(state: KeyState) -> bool:
    """Ambiguous now: to be collected, or recorded so, and not released since."""
    return state.doubt is not None and state.done in (None, RecordStatus.AMBIGUOUS)


@dataclass(frozen=True, slots=True)
class Risk:
    """The worst case of sending ``jobs`` ambiguous jobs again."""

    jobs: int
    candidates: int  # distinct remote jobs that could be theirs
    unread: int  # jobs whose window the listing could not read whole

    @property
    def twice(self) -> int:
        """Images paid twice at most, if every ambiguous job is sent again."""
        return min(self.jobs, self.candidates + self.unread)

    def sentence(self, cost: str | None = None) -> str:
        plural = "" if self.jobs == 1 else "s"
        exist = "exists" if self.candidates == 1 else "exist"
        said = f"{self.jobs} ambiguous job{plural}, {self.candidates} candidate job(s) {exist}"
        if self.unread:
            said += f", {self.unread} with a listing that could not be read whole"
        priced = f" ({cost})" if cost and self.twice else ""
        again = f"sending {them(self.jobs)} again"
        return f"{said}: {again} pays for at most {self.twice} image(s) twice{priced}"


def risk_of(states: Mapping[str, KeyState], keys: Iterable[str] | None = None) -> Risk:
    """The worst case over the ambiguous jobs among ``keys`` (all of them by default)."""
    chosen = states.keys() if keys is None else keys
    ambiguous = [states[k] for k in chosen if k in states and is_ambiguous(states[k])]
    candidates = {c for state in ambiguous for c in state.candidates}
    unread = sum(1 for state in ambiguous if state.doubt != NO_SINGLE_MATCH)
    return Risk(len(ambiguous), len(candidates), unread)


def worst_cost(risk: Risk, prices: Iterable[tuple[float | None, float | None]]) -> str | None:
    """What the ``risk.twice`` dearest jobs cost, from their (USD, compute units) prices: in
    dollars when every one has a USD price, else in compute units (None: neither known)."""
    listed = list(prices)
    usd = [u for u, _ in listed if u is not None]
    if len(usd) == len(listed):
        return dollars(sum(sorted(usd, reverse=True)[: risk.twice]))
    units = [cu for _, cu in listed if cu is not None]
    if len(units) == len(listed):
        return f"{sum(sorted(units, reverse=True)[: risk.twice]):,.1f} CU"
    return None
