"""A pool of API keys: each an account with its own limits, health, and the jobs it holds.

Every key in use is an ``Account``: a client (its token, its request rate), a cap on jobs at
once (``AdaptiveLimit``, probed per account), a submitter (its lost POSTs are matched against
its own listing), a tracker (its jobs are polled and listed with it alone) and its health
(``runner.engine.health``). Accounts are opened lazily: a key costs a few bytes until it
first gets a job, so a pool of 10,000 keys for 6 jobs opens 6 of them. A new job goes to the
live, well account with the most free room (a key not opened yet has all of its room); a job
already submitted stays with the account that holds it, found by the key fingerprint the
journal recorded. A key the API refuses (401, 402) is retired: it takes no new jobs, and the
others carry the run. A key whose submits keep being refused cools down for a while.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from runner.api.keys import ApiKey
from runner.api.limiter import AdaptiveLimit
from runner.api.port import Api
from runner.engine.health import Health
from runner.engine.submitter import Submitter
from runner.engine.tracker import Tracker
from runner.engine.watching import Lister
from runner.state.ledger import KeyState


class NoKeyLeft(Exception):
    """Every key of the pool was retired: nothing more can be submitted."""


@dataclass(eq=False)
class Account:
    """One key of the pool and what works with it, built whole when the key is first used."""

    client: Api
    gate: AdaptiveLimit
    tracker: Tracker
    submits: Submitter
    health: Health
    key: ApiKey
    lister: Lister | None = None  # the listing loop, in list mode
    retired: str | None = None  # why it takes no new jobs
    held: dict[str, int] = field(default_factory=dict)  # why → jobs left unsettled with it

    @property
    def name(self) -> str:
        """The key's fingerprint, as the journal names it."""
        return self.client.account

    @property
    def label(self) -> str:
        """How messages name it: ``key 2 of keys.txt (35a34ba4)``, else ``key 35a34ba4``."""
        return self.key.label


class KeyRing:
    """The keys of a run and the API of each key in use, connected when the key is first used
    (``connect`` opens it, and whoever gave ``connect`` closes what it opened)."""

    def __init__(self, keys: Sequence[ApiKey], connect: Callable[[ApiKey], Api]) -> None:
        self.keys = keys
        self._connect = connect
        self.opened: list[Api] = []

    @classmethod
    def of(cls, apis: Sequence[Api]) -> KeyRing:
        """APIs already open, as a ring (each key named by its fingerprint alone)."""
        keys = [ApiKey("", i, known=api.account) for i, api in enumerate(apis, 1)]
        return cls(keys, lambda key: apis[key.index - 1])

    def api(self, key: ApiKey) -> Api:
        api = self._connect(key)
        self.opened.append(api)
        return api


Opener = Callable[[ApiKey, "KeyPool"], Account]


class KeyPool:
    """The keys of a run, the accounts opened for them, and the one queue of jobs waiting
    for room on any of them.

    Waiting jobs are admitted in arrival order, each to the account with the most free room
    at that moment. With one key this is exactly that key's cap.
    """

    def __init__(
        self,
        keys: Sequence[ApiKey],
        opener: Opener,
        *,
        ceiling: int,
        now: Callable[[], float],
    ) -> None:
        if not keys:
            raise ValueError("a pool needs at least one key")
        self.keys = keys
        self.accounts: list[Account] = []  # opened, in the order they were
        self._open = opener
        self._ceiling = ceiling  # the room of a key not opened yet
        self._now = now
        self._next = 0  # keys[_next:] are not opened yet
        self._by_name: dict[str, Account] = {}
        self._unopened: dict[str, int] | None = None  # fingerprint → index, made when needed
        self._waiters: deque[tuple[anyio.Event, list[Account]]] = deque()

    def _opened(self, index: int) -> Account:
        account = self._open(self.keys[index], self)
        self.accounts.append(account)
        self._by_name[account.name] = account
        if self._unopened is not None:
            self._unopened.pop(account.name, None)
        return account

    def _open_next(self) -> Account | None:
        while self._next < len(self.keys):
            index, self._next = self._next, self._next + 1
            if self.keys[index].fingerprint not in self._by_name:
                return self._opened(index)
        return None

    @property
    def live(self) -> list[Account]:
        return [account for account in self.accounts if account.retired is None]

    @property
    def any_live(self) -> bool:
        """Some key may still take a job: a live account, or a key not opened yet."""
        return self._next < len(self.keys) or any(a.retired is None for a in self.accounts)

    @property
    def several(self) -> bool:
        return len(self.keys) > 1

    def owner(self, state: KeyState) -> Account | None:
        """The account holding the job ``state`` describes (None: a key this run lacks),
        opened if it was not.

        A job journaled before keys were recorded belongs to the pool's first key."""
        if state.account is None:
            return self._by_name.get(self.keys[0].fingerprint) or self._opened(0)
        account = self._by_name.get(state.account)
        if account is not None:
            return account
        if self._unopened is None:  # fingerprints of every key: only when a job needs them
            self._unopened = {
                key.fingerprint: i for i, key in enumerate(self.keys) if i >= self._next
            }
            for name in self._by_name:
                self._unopened.pop(name, None)
        index = self._unopened.get(state.account)
        return None if index is None else self._opened(index)

    def opened(self, name: str | None) -> Account | None:
        """The account of the key with fingerprint ``name``, if it was opened."""
        if name is None:
            return self.accounts[0] if self.accounts else None
        return self._by_name.get(name)

    def retire(self, account: Account, reason: str) -> bool:
        """Take ``account`` out of the pool for new jobs; False if it was retired already."""
        if account.retired is not None:
            return False
        account.retired = reason
        if not self.any_live:  # no room will ever come: wake every waiting job with nothing
            while self._waiters:
                self._waiters.popleft()[0].set()
        return True

    def cool(self, account: Account) -> float:
        """``account`` takes no new job for a while (its health says how long)."""
        return account.health.cool(self._now())

    def ready_besides(self, account: Account) -> bool:
        """Whether a key other than ``account`` could take a job: live and not cooling."""
        if self._next < len(self.keys):
            return True
        now = self._now()
        return any(
            other is not account and other.retired is None and not other.health.cooling(now)
            for other in self.accounts
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Account]:
        """Room for a new job on the account with the most of it, held for the block."""
        if not self.any_live:
            raise NoKeyLeft
        account = self._roomiest() if not self._waiters else None
        if account is not None:
            account.gate.in_use += 1
        else:
            account = await self._queue()
        try:
            async with account.gate.leased():  # its slot in a coordinator's share, if any
                yield account
        finally:
            account.gate.in_use -= 1
            self.admit()

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
                self.admit()
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise
        if not given:
            raise NoKeyLeft
        return given[0]

    def _roomiest(self) -> Account | None:
        """The well account with the most room; a key not opened yet (all of its room) when
        none has as much; a cooling one only when every live key is cooling."""
        now = self._now()
        best, room = None, 0
        cooling, cooling_room = None, 0
        for account in self.accounts:
            free = account.gate.room
            if account.retired is not None:
                continue
            if account.health.cooling(now):
                if free > cooling_room:
                    cooling, cooling_room = account, free
            elif free > room:
                best, room = account, free
        if room < self._ceiling and self._next < len(self.keys):
            opened = self._open_next()
            if opened is not None:
                return opened
        if best is None and not any(
            a.retired is None and not a.health.cooling(now) for a in self.accounts
        ):
            return cooling  # every live key cools: the one with room tries (as a pool of one)
        return best

    def admit(self) -> None:
        """Room may have come on some key: admit the jobs waiting, in arrival order."""
        while self._waiters:
            account = self._roomiest()
            if account is None:
                return
            account.gate.in_use += 1
            admitted, given = self._waiters.popleft()
            given.append(account)
            admitted.set()

    # ---- figures ------------------------------------------------------------------------------

    def following(self) -> int:
        """Jobs of this run's keys that run at the API now (a job id, no outcome yet)."""
        return sum(len(account.tracker.watches) for account in self.accounts)

    @property
    def in_use(self) -> int:
        return sum(account.gate.in_use for account in self.accounts)

    def posting(self) -> int:
        """POSTs in flight over every key."""
        return sum(account.submits.in_flight for account in self.accounts)

    def requests(self) -> Counter[str]:
        """API requests sent over every key, by kind."""
        return sum((account.client.requests_by for account in self.accounts), Counter())

    def running(self) -> dict[str, int]:
        """Jobs in flight per key (a pool of one: none, the totals say it)."""
        if not self.several:
            return {}
        return {account.name: account.gate.in_use for account in self.accounts}
