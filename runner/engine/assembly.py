"""The one place a run's parts are built, each whole: the pool and each key's account (its
gate, tracker, submitter and listing loop), the key care, the stopper and the job flow."""

from __future__ import annotations

import random
from dataclasses import dataclass

from anyio.abc import TaskGroup

from runner.api.keys import ApiKey
from runner.api.limiter import AdaptiveLimit
from runner.api.server_clock import ServerClock
from runner.engine.accounts import Account, KeyPool, KeyRing
from runner.engine.budget import Budget
from runner.engine.coordinator import Coordinator
from runner.engine.deliveries import Deliveries
from runner.engine.flow import FlowPolicy, JobFlow
from runner.engine.health import Health
from runner.engine.key_care import KeyCare
from runner.engine.latency import TrackSettings, TypicalLatency
from runner.engine.lost_round import Ownership
from runner.engine.options import ALL_KEYS, EngineOptions
from runner.engine.recall import Recalls
from runner.engine.recording import Recorder
from runner.engine.retry import Clock
from runner.engine.siblings import Siblings
from runner.engine.stopper import Stopper
from runner.engine.submitter import SubmitSettings, Submitter
from runner.engine.tracker import Tracker
from runner.engine.uploads import Uploads
from runner.errors import FatalApiError
from runner.manifest import Manifest
from runner.outputs.writers import Writer
from runner.state.journal import Journal
from runner.state.ledger import KeyState
from runner.state.phase import Phase
from runner.state.run_events import KeyInUse


@dataclass(frozen=True)
class Shared:
    """What every part of a run reads: made once, before the run starts."""

    manifest: Manifest
    options: EngineOptions
    clock: Clock
    server_clock: ServerClock
    budget: Budget
    deliveries: Deliveries
    rng: random.Random
    coordinator: Coordinator | None = None  # what the processes of a split share, if anything


class Parts:
    """Every part of one run, built whole in the constructor (accounts when first used)."""

    def __init__(
        self,
        shared: Shared,
        ring: KeyRing,
        journal: Journal,
        writer: Writer,
        stopper: Stopper,
        helpers: TaskGroup,
        policy: FlowPolicy,
    ) -> None:
        settings = shared.manifest.settings
        self.shared, self.ring, self.journal, self.writer = shared, ring, journal, writer
        self.stopper, self.helpers = stopper, helpers
        self.latency = TypicalLatency()  # the keys' jobs run the same models: learnt once
        sharing = shared.options.shard[1] if shared.options.shard and shared.coordinator else 1
        self.tracking = track_settings(shared.manifest, shared.options, sharing)
        self.submitting = SubmitSettings(
            concurrency=settings.submit_concurrency,
            lost_answer_wait=settings.lost_answer_wait,
            api_timeout=shared.options.api_timeout,
            retry=shared.options.retry,
            webhook=shared.options.webhook,
        )
        self.siblings = None
        if shared.options.siblings is not None:
            own = journal.path.parent.parent  # the folder the journal is the state of
            self.siblings = Siblings(shared.options.siblings, own, shared.options.shard)
        now = shared.clock.monotonic
        self.pool = KeyPool(ring.keys, self._account, ceiling=settings.concurrency, now=now)
        self.keys = KeyCare(self.pool, journal, stopper, shared.clock)
        self.flow = JobFlow(
            self.pool,
            journal,
            writer,
            shared.clock,
            shared.budget,
            policy,
            stopper=stopper,
            keys=self.keys,
            recalls=Recalls(journal, shared.budget, policy.started),
            deliveries=shared.deliveries,
        )
        self.recorder = Recorder(journal, writer, self.pool, policy.again)

    async def recover(self, run_started: float) -> None:
        """Match the POSTs an earlier run left unanswered, each in its own key's listing."""
        by_account: dict[Account, dict[str, KeyState]] = {}
        for key, state in self.journal.ledger.states.items():
            if state.phase is Phase.SUBMITTING:
                account = self.pool.owner(state)
                if account is not None:  # else a key this run lacks: left pending, deferred
                    by_account.setdefault(account, {})[key] = state
        for account, owned in by_account.items():
            try:
                await account.submits.recover(owned, run_started)
            except FatalApiError as exc:  # left pending: a run with a working key checks them
                self.keys.refused(account, exc)

    def _account(self, key: ApiKey, pool: KeyPool) -> Account:
        """A key's account, made when the key first gets a job (or holds one)."""
        shared, settings = self.shared, self.shared.manifest.settings
        api = self.ring.api(key)
        coordinator = shared.coordinator
        share = None
        if coordinator is not None:  # the key's slots, leased over every process of the run
            share = coordinator.slots(
                api.account, settings.concurrency, lambda: self.stopper.stopping
            )
        gate = AdaptiveLimit(
            settings.concurrency, clock=shared.clock.monotonic, on_room=pool.admit, share=share
        )
        tracker = Tracker(
            api,
            self.writer,
            shared.clock,
            self.tracking,
            note=self.journal.note,
            rng=shared.rng,
            latency=self.latency,
            hooks=shared.deliveries,
        )
        shared.deliveries.trackers.append(tracker)
        health = Health(shared.options.key_patience, shared.options.key_cooldown)
        uploads = Uploads(
            api,
            self.journal,
            shared.clock,
            shared.options.retry,
            shared.manifest.assets,
            shared.rng,
        )
        submitter = Submitter(
            api,
            self.journal,
            shared.clock,
            shared.server_clock,
            self.submitting,
            budget=shared.budget,
            gate=gate,
            stopping=lambda: self.stopper.stopping,
            rng=shared.rng,
            uploads=uploads,
            health=health,
            elsewhere=lambda: pool.ready_besides(account),
            owner=Ownership(self._exclusive(key), self.siblings, shared.deliveries.key_of),
        )
        lister = None
        if settings.poll_mode in ("list", "auto"):
            lister = tracker.follow_listing(lambda exc: self.keys.refused(account, exc))
            self.helpers.start_soon(lister.run)
        account = Account(api, gate, tracker, submitter, health, key, lister=lister)
        if pool.several:
            self.journal.note(KeyInUse(account.name, key.place))
        return account

    def _exclusive(self, key: ApiKey) -> bool:
        """Whether ``key`` was declared exclusive (nobody else submits with it)."""
        declared = self.shared.options.exclusive
        return ALL_KEYS in declared or key.fingerprint in declared


def track_settings(manifest: Manifest, options: EngineOptions, sharing: int = 1) -> TrackSettings:
    """How jobs are followed, from the run's settings. ``sharing``: the processes that share
    the request rate through a coordinator (a split's shards), whose listings take a tenth of
    it together, as a static split's do."""
    settings = manifest.settings
    alone_when_short = None
    if settings.poll_mode == "auto":
        # Polling every job in flight each interval must fit in half the rate with room to
        # spare, the other half left to submits and downloads' refreshes.
        polls = settings.concurrency / settings.poll_interval
        alone_when_short = polls if 4 * polls <= settings.rate_limit else None
    return TrackSettings(
        poll_interval=settings.poll_interval,
        webhook_poll_interval=settings.webhook_poll_interval,
        # Listing passes take a tenth of the request rate at most.
        listing_gap=10 * sharing / settings.rate_limit,
        job_timeout=settings.job_timeout,
        retry=options.retry,
        alone_when_short=alone_when_short,
        straggler_after=settings.straggler_after,
        straggler_resends=settings.straggler_resends,
    )
