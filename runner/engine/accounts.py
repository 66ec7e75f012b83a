"""A pool of API keys: each an account with its own limits, and the jobs it holds.

Every key is an ``Account``: a client (its token, its request rate), a cap on jobs at once
(``AdaptiveLimit``, probed per account), a submitter (its lost POSTs are matched against its
own listing) and a tracker (its jobs are polled and listed with it alone). A new job goes to
the live account with the most free room; a job already submitted stays with the account
that holds it, found by the key fingerprint the journal recorded. A key the API refuses
(401, 402) is retired: it takes no new jobs, and the others carry the run.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from runner.api.client import KreaClient
from runner.api.limiter import AdaptiveLimit
from runner.engine.submitter import Submitter
from runner.engine.tracker import Tracker
from runner.engine.watching import Lister
from runner.outputs.ledger import KeyState


class NoKeyLeft(Exception):
    """Every key of the pool was retired: nothing more can be submitted."""


@dataclass(eq=False)
class Account:
    """One key of the pool and what works with it."""

    client: KreaClient
    gate: AdaptiveLimit
    tracker: Tracker
    submitter: Submitter | None = None  # made when the run starts (it needs the journal)
    lister: Lister | None = None  # the listing loop, in list mode
    retired: str | None = None  # why it takes no new jobs

    @property
    def name(self) -> str:
        """The key's fingerprint, as the journal and the logs name it."""
        return self.client.account

    @property
    def submits(self) -> Submitter:
        if self.submitter is None:
            raise RuntimeError("the run has not started")
        return self.submitter


class KeyPool:
    """The accounts of a run, and the one queue of jobs waiting for room on any of them.

    Waiting jobs are admitted in arrival order, each to the account with the most free room
    at that moment. With one key this is exactly that key's cap.
    """

    def __init__(self, accounts: Sequence[Account]) -> None:
        if not accounts:
            raise ValueError("a pool needs at least one key")
        self.accounts = list(accounts)
        self._by_name = {account.name: account for account in self.accounts}
        self._waiters: deque[tuple[anyio.Event, list[Account]]] = deque()
        for account in self.accounts:
            account.gate.on_room = self._admit

    @property
    def live(self) -> list[Account]:
        return [account for account in self.accounts if account.retired is None]

    @property
    def several(self) -> bool:
        return len(self.accounts) > 1

    def owner(self, state: KeyState) -> Account | None:
        """The account holding the job ``state`` describes (None: a key this run lacks).

        A job journaled before keys were recorded belongs to the pool's first key."""
        if state.account is None:
            return self.accounts[0]
        return self._by_name.get(state.account)

    def retire(self, account: Account, reason: str) -> bool:
        """Take ``account`` out of the pool for new jobs; False if it was retired already."""
        if account.retired is not None:
            return False
        account.retired = reason
        if not self.live:  # no room will ever come: wake every waiting job with nothing
            while self._waiters:
                self._waiters.popleft()[0].set()
        return True

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Account]:
        """Room for a new job on the account with the most of it, held for the block."""
        if not self.live:
            raise NoKeyLeft
        account = self._roomiest() if not self._waiters else None
        if account is not None:
            account.gate.in_use += 1
        else:
            account = await self._queue()
        try:
            yield account
        finally:
            account.gate.in_use -= 1
            self._admit()

    async def _queue(self) -> Account:
        admitted = anyio.Event()
        given: list[Account] = []
        entry = (admitted, given)
        self._waiters.append(entry)
        try:
            await admitted.wait()  # _admit counted our slot before waking us
        except BaseException:
            if given:
                given[0].gate.in_use -= 1  # admitted and cancelled at once: pass the slot on
                self._admit()
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise
        if not given:
            raise NoKeyLeft
        return given[0]

    def _roomiest(self) -> Account | None:
        best, room = None, 0
        for account in self.accounts:
            free = account.gate.room
            if free > room and account.retired is None:
                best, room = account, free
        return best

    def _admit(self) -> None:
        while self._waiters:
            account = self._roomiest()
            if account is None:
                return
            account.gate.in_use += 1
            admitted, given = self._waiters.popleft()
            given.append(account)
            admitted.set()

    # ---- figures ------------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return sum(account.gate.in_use for account in self.accounts)

    def running(self) -> dict[str, int]:
        """Jobs in flight per key (a pool of one: none, the totals say it)."""
        if not self.several:
            return {}
        return {account.name: account.gate.in_use for account in self.accounts}
