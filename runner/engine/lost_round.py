"""Lost answers: a barrier stops new POSTs, the ones in flight settle, and then one round lists
the jobs created around every lost POST and matches them (``runner.engine.matching``).

A lost POST is sent again only when the listing, read in whatever order the server gives it,
proves its window holds no job of its own; one job proven its own is adopted; anything else
is ambiguous (its candidates kept) or waits for a later look. The same round runs at start for
the POSTs a crash left pending.

On an account declared exclusive (nobody else submits with it), the jobs in the windows of
ambiguous POSTs are all ours: those not ended are cancelled and read back, and the POSTs are
matched again over what the jobs became (``matching.reconcile``); the cancels are journaled
before any of them is sent again. Jobs a sibling shard's journal names are no one's
candidates here, and while a sibling has a POST unanswered nothing is cancelled.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace

import anyio

from runner.api.port import Api
from runner.api.server_clock import ServerClock
from runner.api.skew import DATE_PRECISION, ClockSkew
from runner.engine.health import Health
from runner.engine.matching import (
    ENDED,
    Candidate,
    ListingScan,
    LostPost,
    Matching,
    match,
    reconcile,
    unknown_clock,
    unproven,
    window_bounds,
)
from runner.engine.outcome import Deferred, Doubted, Sent, Submission
from runner.engine.retry import Clock, RetryPolicy, retrying
from runner.engine.siblings import Siblings
from runner.engine.withdraw import withdraw
from runner.errors import ApiError, PermanentApiError, TransientApiError
from runner.state.events import RECONCILED, Ambiguous, Event, JobCancelled, Lost, Submitted
from runner.state.journal import Journal
from runner.state.ledger import NO_SINGLE_MATCH, KeyState
from runner.state.run_events import LostChecked, TransientError

log = logging.getLogger("runner.engine.submitter")

LIST_PAGE = 100  # jobs per listing page while matching lost POSTs
# Answers to GET /jobs saying the API has no listing at all: a lost submit cannot be checked,
# now or later.
NO_LISTING = frozenset({403, 404, 405, 501})
NO_LISTING_DOUBT = "the API has no job listing to check a lost submit against"


@dataclass(frozen=True, slots=True)
class RoundSettings:
    """How lost answers are looked for."""

    # After a lost answer, wait this long before listing: a server (or the one behind a
    # gateway that answered 5xx) may still be creating the job.
    lost_answer_wait: float = 1.0
    api_timeout: float = 30.0  # a POST's whole time; bounds a crashed run's pending windows
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Ownership:
    """Whose jobs a key's listing may hold: ``exclusive``, nobody else submits with the key
    (its lost POSTs' unclaimed jobs are ours to cancel); ``siblings``, the shards of this
    run's split whose jobs are theirs."""

    exclusive: bool = False
    siblings: Siblings | None = None
    # The key a signed webhook delivery said a job is of (None: none said), from the run's
    # Deliveries: a job that names its key is that key's, whatever its window.
    identify: Callable[[str], str | None] = lambda job_id: None


class LostRounds:
    """One key's lost POSTs, the barrier they raise and the rounds that settle them."""

    def __init__(
        self,
        api: Api,
        journal: Journal,
        clock: Clock,
        server_clock: ServerClock,
        settings: RoundSettings,
        *,
        health: Health,
        rng: random.Random,
        owner: Ownership | None = None,
    ) -> None:
        self.api = api
        self.owner = owner or Ownership()
        self.journal = journal
        self.clock = clock
        self.server_clock = server_clock
        self.settings = settings
        self.health = health
        self.rng = rng
        self.barrier: anyio.Event | None = None  # up while lost POSTs are being matched
        self._lost: dict[str, LostPost] = {}
        self._outcomes: dict[str, Submission | None] = {}  # None: send it again
        self._round = anyio.Lock()

    def raise_barrier(self, lost: LostPost) -> None:
        self._lost[lost.key] = lost
        if self.barrier is None:
            self.barrier = anyio.Event()

    async def settle(
        self, lost: LostPost, quiet: Callable[[], Awaitable[None]]
    ) -> Submission | None:
        """Once ``quiet`` says no POST is in flight, learn what ``lost`` created. None: nothing,
        so it is sent again."""
        await quiet()
        async with self._round:
            if lost.key not in self._outcomes:
                await self._match_round()
            return self._outcomes.pop(lost.key)

    async def recover(self, states: dict[str, KeyState], run_started: float) -> None:
        """Match the POSTs an earlier run left pending (it crashed before their answers)."""
        for key, state in states.items():
            if state.pending_since is not None and state.done is None:
                ended = min(state.pending_since + self.settings.api_timeout, run_started)
                before = state.pending_skew or self.journal.ledger.skew  # older journals: none
                self._lost[key] = LostPost(key, state.pending_since, ended, before=before)
        if self._lost:
            log.info(
                "checking %d submit(s) an earlier run left unanswered (key %s)",
                len(self._lost),
                self.api.account,
            )
            async with self._round:
                await self._match_round(settle=False)
            self._outcomes.clear()

    async def _match_round(self, *, settle: bool = True) -> None:
        posts, self._lost = list(self._lost.values()), {}
        try:
            if settle:
                await self.clock.sleep(self.settings.lost_answer_wait)
                # A job may be stamped after its POST's answer was lost, up to this moment:
                # no POST of ours has gone out since, so the window can safely reach it.
                now = self.clock.time()
                posts = [p if p.created else replace(p, ended=now) for p in posts]
            try:
                scan, after = await self._scan_listing(posts)
            except ApiError as exc:
                await self._unchecked(posts, exc)
                return
            doubt = scan.doubt
            if doubt is None and unknown_clock(posts, after):
                doubt = "the server's clock was not read both before and after (no Date header?)"
            elif doubt is None and scan.newest is not None:
                latest = self.clock.time() + after.high + DATE_PRECISION
                if scan.newest > latest:  # its stamps and its Date come from different clocks
                    doubt = "the listing holds jobs stamped after the server's own time"
            named = self._named(posts, scan.jobs)
            rest = [post for post in posts if post.key not in named]
            jobs = scan.jobs.values()
            found = (
                match(rest, jobs, after) if doubt is None else unproven(rest, jobs, after, doubt)
            )
            found.adopted.update(named)
            cancels: list[Event] = []
            unbilled: Collection[str] = ()
            if doubt is None and found.ambiguous and self._ours(scan):
                found, cancels, unbilled = await self._reconcile(posts, scan.jobs, after, found)
            await self._record(posts, found, cancels, unbilled)
        finally:
            if self.barrier is not None:
                self.barrier.set()
                self.barrier = None

    async def _unchecked(self, posts: list[LostPost], exc: ApiError) -> None:
        """The listing could not be read. An API without one (404, 405, 501: it never will
        be) leaves the lost submits ambiguous, with that reason, for ``--retry-ambiguous``
        to release; any other failure leaves them pending, for a later look."""
        if isinstance(exc, PermanentApiError) and exc.status in NO_LISTING:
            why = f"{NO_LISTING_DOUBT} ({exc})"
            states = self.journal.ledger.states
            for post in posts:
                log.warning("? %s: %s: not sent again", post.key, why)
                self._outcomes[post.key] = Doubted(why)
            await self.journal.record_many(
                Ambiguous(post.key, states[post.key].attempts, (), why) for post in posts
            )
            return
        self.journal.note(LostChecked(unchecked=len(posts)))
        reason = f"could not check whether a lost submit created a job: {exc}"
        log.warning("? %s (%d submits)", reason, len(posts))
        self.health.unable(reason)  # its other jobs go to keys that can check theirs
        for post in posts:  # the pending line stays: the next run checks again
            self._outcomes[post.key] = Deferred(reason)

    def _named(self, posts: list[LostPost], jobs: dict[str, Candidate]) -> dict[str, Candidate]:
        """Take out of ``jobs`` those whose signed delivery named their key: the lost POST of
        that key adopts its own; another key's job is no one's candidate."""
        keys = {post.key for post in posts}
        adopted: dict[str, Candidate] = {}
        for job_id in list(jobs):
            key = self.owner.identify(job_id)
            if key is not None:
                job = jobs.pop(job_id)
                if key in keys:
                    adopted.setdefault(key, job)
        return adopted

    def _ours(self, scan: ListingScan) -> bool:
        """Whether the unclaimed jobs of the windows are surely ours: the key is exclusive,
        and no sibling shard has a POST whose job its journal does not name yet."""
        if not self.owner.exclusive:
            return False
        pending = scan.sibling_pending
        if pending:
            log.warning("? %d POST(s) of sibling shards are unanswered: nothing cancelled", pending)
        return not pending

    async def _reconcile(
        self,
        posts: list[LostPost],
        jobs: dict[str, Candidate],
        after: ClockSkew,
        found: Matching,
    ) -> tuple[Matching, list[Event], list[str]]:
        """An exclusive account's ambiguous POSTs: their candidates not ended are cancelled
        and read back, then the POSTs matched again over what became of them. Returns the
        new matching, the cancels to journal ahead of it and the POSTs it lets go again
        (whatever they made was not billed)."""
        doubted = [p for p in posts if p.key in found.ambiguous]
        states = self.journal.ledger.states
        owners: dict[str, str] = {}  # each candidate, under the first POST it may be of
        for post in doubted:
            for job_id in found.ambiguous[post.key]:
                owners.setdefault(job_id, post.key)
        read = {job_id: jobs[job_id] for job_id in owners if jobs[job_id].status in ENDED}
        running = [job_id for job_id in owners if job_id not in read]
        pause = self.settings.lost_answer_wait

        async def withdrawn(job_id: str) -> None:
            back = await withdraw(self.api, self.clock, job_id, pause)
            read[job_id] = replace(jobs[job_id], status=back.status.value if back else "unread")

        async with anyio.create_task_group() as group:  # every candidate at once: each
            for job_id in running:  # second one waits, another may complete and bill
                group.start_soon(withdrawn, job_id)
        cancels: list[Event] = []
        for job_id in running:
            if read[job_id].status == "cancelled":
                key = owners[job_id]
                cancels.append(JobCancelled(key, states[key].attempts, job_id, RECONCILED))
        again = reconcile(doubted, read.values(), after)
        log.warning(
            "? exclusive account: %d candidate(s) of %d lost submit(s) cancelled unbilled; "
            "%d adopted, %d sent again, %d still ambiguous",
            len(cancels),
            len(doubted),
            len(again.adopted),
            len(again.resend),
            len(again.ambiguous),
        )
        merged = Matching(
            adopted={**found.adopted, **again.adopted},
            resend=found.resend + again.resend,
            ambiguous=again.ambiguous,
            unseen=found.unseen + again.unseen,
        )
        return merged, cancels, again.resend

    async def _record(
        self,
        posts: list[LostPost],
        found: Matching,
        first: list[Event],
        unbilled: Collection[str] = (),
    ) -> None:
        """Journal what the round found (``first``: the cancels it made, written ahead of
        the POSTs they let go again, ``unbilled``)."""
        by_key = {p.key: p for p in posts}
        states = self.journal.ledger.states
        events: list[Event] = list(first)
        for key, job in found.adopted.items():
            post, state = by_key[key], states[key]
            log.warning("? found %s's job %s: adopted, not sent again", key, job.job_id)
            events.append(
                Submitted(
                    key,
                    state.attempts,
                    job.job_id,
                    post.sent,
                    post.ended,
                    job.created,
                    adopted=True,
                    account=self.api.account,
                )
            )
            self._outcomes[key] = Sent(job.job_id, post.sent, post.ended)
        for key in found.resend:
            if key in unbilled:
                log.warning(
                    "? %s: no job its lost submit may have made was billed (cancelled or "
                    "failed): sending it again",
                    key,
                )
            else:
                log.warning("? %s's lost submit created no job: sending it again", key)
            events.append(Lost(key, states[key].attempts))
            self._outcomes[key] = None
        why = found.doubt or NO_SINGLE_MATCH
        for key, candidates in found.ambiguous.items():
            log.warning(
                "? %s: %s (candidates: %s): not sent again",
                key,
                why,
                ", ".join(candidates) or "none listed",
            )
            events.append(Ambiguous(key, states[key].attempts, tuple(candidates), why))
            self._outcomes[key] = Doubted(why)
        for key in found.unseen:
            reason = "the server accepted a submit whose job the listing does not show yet"
            self._outcomes[key] = Deferred(reason)
        await self.journal.record_many(events)
        self.journal.note(LostChecked(resent=len(found.resend), unchecked=len(found.unseen)))

    def _listing_failed(self, exc: TransientApiError, delay: float) -> None:
        """A page of the listing failed while lost submits wait for it: past the key's
        patience, the jobs waiting behind the barrier (never sent) go to other keys."""
        self.journal.note(TransientError(exc.status, exc.overload))
        self.health.refused(self.clock.monotonic(), f"its listing fails: {exc}")
        if self.barrier is not None and self.health.exhausted(self.clock.monotonic()):
            waiting, self.barrier = self.barrier, anyio.Event()
            waiting.set()  # they look at the key's health, then wait on the new barrier

    async def _scan_listing(self, posts: list[LostPost]) -> tuple[ListingScan, ClockSkew]:
        """Read the listing until it proves what the lost POSTs' windows hold (or cannot);
        with the server's clock as the answers read meanwhile showed it."""
        known: Collection[str] = self.journal.ledger.known_ids
        pending = 0
        if self.owner.siblings is not None:  # their jobs are theirs: never candidates here
            siblings = self.owner.siblings.read()
            known, pending = siblings.ids | self.journal.ledger.known_ids, siblings.pending
        scan = ListingScan(known, sibling_pending=pending)
        cursor: str | None = None
        with self.server_clock.reading(self.clock.time()) as reading:
            while True:
                page, cursor = await retrying(
                    functools.partial(self.api.list_jobs, LIST_PAGE, cursor),
                    self.settings.retry,
                    self.clock,
                    self.rng,
                    on_error=self._listing_failed,
                )
                # Bounds taken after each page: its Date may have shown a clock jump.
                start, _ = window_bounds(posts, reading.after)
                listed = [Candidate(job.job_id, job.created_at, job.status) for job in page]
                if not scan.feed(listed, cursor, start):
                    return scan, reading.after
