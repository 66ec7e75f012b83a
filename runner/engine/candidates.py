"""An ambiguous job's candidates: the jobs that may be the one its lost POST made.

Its candidates are waited for to their ends; with webhooks, a signed end says which key a job
is of (``Deliveries.key_of``): a candidate of this key's is adopted, fetched as its own; when
every candidate proves to be another key's, its POST made nothing (the listing was read over
its whole window), and it is sent again, once. Otherwise the candidates that completed were
paid for: their images are kept under images/_unmatched/, and the job ends ambiguous.
"""

from __future__ import annotations

import logging

import anyio

from runner.api.remote import JobStatus, RemoteJob
from runner.engine.accounts import Account, KeyPool
from runner.engine.deliveries import Deliveries
from runner.engine.key_care import KeyCare
from runner.engine.outcome import Ambiguous, Deferred, Outcome
from runner.engine.retry import Clock
from runner.errors import FatalApiError
from runner.jobspec import JobSpec
from runner.outputs.layout import UNMATCHED_DIR, unmatched_stem
from runner.state.events import Lost, Submitted
from runner.state.journal import Journal
from runner.state.ledger import NO_SINGLE_MATCH, KeyState
from runner.state.records import FileEntry

log = logging.getLogger("runner.engine.engine")
# Seconds to wait, once the candidates have ended, for the deliveries that name their keys:
# the end may be seen (by the listing, a poll) before its delivery arrives, and a delivery
# the run could not take (it was not running yet) comes again later.
DELIVERY_GRACE = 15.0
DELIVERY_CHECK = 0.25  # seconds between looks at what the deliveries named (no request)


def keyless(state: KeyState) -> Deferred:
    return Deferred(
        f"it was submitted with key {state.account}, which this run does not have: "
        "run with that key to collect it"
    )


class Candidates:
    """Collects ambiguous jobs' candidates; many jobs share it (and their candidates)."""

    def __init__(
        self,
        pool: KeyPool,
        journal: Journal,
        keys: KeyCare,
        deliveries: Deliveries,
        clock: Clock,
        *,
        webhooks: bool,
    ) -> None:
        self.pool = pool
        self.journal = journal
        self.keys = keys
        self.identify = deliveries.key_of  # the key a delivery said a job is of
        self.silence = deliveries.silence  # whether deliveries are known not to come
        self.webhooks = webhooks
        self.clock = clock
        self._collected: set[str] = set()  # candidates already fetched
        self._ending: dict[str, anyio.Event] = {}  # candidates one job waits for the end of
        self._ends: dict[str, RemoteJob | None] = {}  # how they ended (None: unknown)

    async def collect(self, spec: JobSpec, state: KeyState) -> Outcome | None:
        """The job's outcome, or None once a delivery told which job is its own (adopted)
        or that none is (sent again): its phase changed.

        Jobs that lost their answers together share candidates: each candidate is fetched by
        the first of them to reach it, and listed in that one's record. The candidates are in
        the listing of the key that sent the lost POST, and are fetched with it.
        """
        account = self.pool.owner(state)
        if account is None:
            return keyless(state)
        files: list[FileEntry] = []
        paid = 0
        with account.gate.held():
            try:
                if self.webhooks and await self._told(account, spec, state):
                    return None
                for job_id in state.candidates:
                    if job_id in self._collected or self.identify(job_id) is not None:
                        continue  # fetched by another, or another key's own job
                    self._collected.add(job_id)
                    try:
                        got = await self._candidate(account, job_id)
                    except FatalApiError:
                        self._collected.discard(job_id)
                        raise
                    if got is not None:
                        paid, files = paid + 1, files + got
            except FatalApiError as exc:
                self.keys.refused(account, exc)
                return Deferred(f"key {account.name} was refused: {exc}")
        return Ambiguous(state.candidates, files, paid)

    async def _told(self, account: Account, spec: JobSpec, state: KeyState) -> bool:
        """Wait for the candidates' ends, each woken by its delivery; True when the keys
        they named settle the job (journaled: adopted, or its POST made nothing)."""
        for job_id in state.candidates:
            if self.identify(job_id) is None:
                await self._end_of(account, job_id)
        waited = 0.0
        while (
            waited < DELIVERY_GRACE
            and not self.silence.confirmed  # no delivery is coming: no use waiting for one
            and any(self.identify(j) is None for j in state.candidates)
        ):
            await self.clock.sleep(DELIVERY_CHECK)
            waited += DELIVERY_CHECK
        named = {job_id: self.identify(job_id) for job_id in state.candidates}
        mine = [job_id for job_id, key in named.items() if key == spec.key]
        if len(mine) == 1:
            log.warning(
                "? %s's job %s said whose it is: adopted, not sent again", spec.key, mine[0]
            )
            event = Submitted(spec.key, state.attempts, mine[0], adopted=True, account=account.name)
            await self.journal.record(event)
            return True
        proven = state.doubt == NO_SINGLE_MATCH  # the listing was read over the whole window
        if proven and named and all(key not in (None, spec.key) for key in named.values()):
            log.warning("? %s: every candidate is another job's: sending it again", spec.key)
            await self.journal.record(Lost(spec.key, state.attempts))
            return True
        return False

    async def _end_of(self, account: Account, job_id: str) -> RemoteJob | None:
        """A candidate as it ended (None: not known), woken by its delivery with webhooks;
        the jobs sharing it wait together (a tracker follows a job once)."""
        if job_id in self._ends:
            return self._ends[job_id]
        ending = self._ending.get(job_id)
        if ending is not None:
            await ending.wait()
            return self._ends.get(job_id)
        ending = self._ending[job_id] = anyio.Event()
        try:
            ended = await account.tracker.wait(job_id, webhook=self.webhooks)
            self._ends[job_id] = ended if isinstance(ended, RemoteJob) else None
        finally:
            del self._ending[job_id]
            ending.set()
        return self._ends[job_id]

    async def _candidate(self, account: Account, job_id: str) -> list[FileEntry] | None:
        """A candidate's images, when it completed (kept under images/_unmatched/); None
        when it did not (not billed)."""
        ended = await self._end_of(account, job_id)
        if ended is None or ended.status != JobStatus.COMPLETED:
            return None
        stem = unmatched_stem(job_id)
        got = await account.tracker.download_all(ended, f"{UNMATCHED_DIR}/{stem}", stem)
        return got if isinstance(got, list) else []
