"""What a run does about its keys: one refused (401, 402) is retired, one whose submits keep
being refused cools down, and the run stops, with advice that fits, once none is left."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from runner.api.keys import ApiKey
from runner.engine.accounts import Account, KeyPool
from runner.engine.retry import Clock
from runner.engine.stopper import Stopper
from runner.errors import FatalApiError
from runner.state.journal import Journal
from runner.state.run_events import KeyCooling, KeyRetired

log = logging.getLogger("runner.engine.engine")


class KeyCare:
    """The run's keys as the API treats them."""

    def __init__(self, pool: KeyPool, journal: Journal, stopper: Stopper, clock: Clock) -> None:
        self.pool = pool
        self.journal = journal
        self.stopper = stopper
        self.clock = clock
        self._refusals: set[int | None] = set()  # the statuses keys were refused with

    def refused(self, account: Account, exc: FatalApiError) -> None:
        """The API refused a key (401, 402): retire it, said once for the key; stop
        submitting once none is left."""
        if not self.pool.retire(account, str(exc)):
            return
        self._refusals.add(exc.status)
        if self.pool.several:
            self.journal.note(KeyRetired(account.name, str(exc)))
        if self.pool.any_live:
            log.warning("%s retired: %s; the other keys carry the run", account.label, exc)
            return
        if self.pool.several:
            log.warning("%s retired: %s", account.label, exc)
        self.stop_for_refusals(exc)

    def stop_for_refusals(self, exc: FatalApiError) -> None:
        """Every key was refused: stop, and say what would help (not "run it again")."""
        keys, stopper = self.pool.keys, self.stopper
        if stopper.fatal is None:
            stopper.fatal = exc
            stopper.advice = refusals_advice(self._refusals | {exc.status}, keys)
        if stopper.reason is None:
            why = "every API key was refused" if len(keys) > 1 else str(exc)
            if self.pool.following():
                stopper.stop(why)
            else:  # nothing to wait for: say so, once
                stopper.stop_quietly(why)
                log.error("%s: no more submits, and no job is running", why)

    def unwell(self, account: Account, reason: str) -> None:
        """A key's submits keep being refused: its jobs not created go to the other keys."""
        if account.health.cooling(self.clock.monotonic()):
            return  # said when it began to cool
        seconds = self.pool.cool(account)
        if self.pool.several:
            self.journal.note(KeyCooling(account.name, reason))
        log.warning(
            "%s: %s; the jobs it has not created go to the other keys, and it is tried "
            "again in %g s",
            account.label,
            reason,
            seconds,
        )

    def say_held(self) -> None:
        """Per key, the jobs left with it unsettled (its lost submits could not be checked,
        or it could not be asked about them): a later run with that key settles them."""
        for account in self.pool.accounts:
            for why, jobs in account.held.items():
                log.warning(
                    "%s holds %d job(s) it could not settle (%s): a later run with this key "
                    "checks them, and never sends them with another",
                    account.label,
                    jobs,
                    why,
                )


def refusal_advice(exc: FatalApiError, key: ApiKey | None) -> str:
    """What helps when the API refused ``key`` (pure)."""
    place = key.place if key is not None else None
    if exc.status == 402:
        whose = f"the account of {place}" if place else "the account"
        return f"add credits to {whose}, then run the same command again"
    what = place or "the API key"
    return f"check {what}: revoked or mistyped? (Krea: Settings → API)"


def refusals_advice(statuses: set[int | None], keys: Sequence[ApiKey]) -> str:
    """What helps when the API refused every key, by the causes it gave (pure)."""
    source = keys[0].source if keys else None
    if len(keys) == 1:
        key = keys[0]
        one = FatalApiError("", status=402 if statuses == {402} else 401)
        return refusal_advice(one, key)
    where = f" in {source}" if source else ""
    parts = []
    if statuses - {402}:
        parts.append(f"check the keys{where}: revoked or mistyped? (Krea: Settings → API)")
    if 402 in statuses:
        parts.append("add credits to the accounts out of them, then run the same command again")
    return "; ".join(parts)
