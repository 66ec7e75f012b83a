"""The one fold: every event of a run, journaled or only noted, changes the run's state here.

``RunLedger.apply`` is the only code that changes a job's state (``KeyState``) and the run's
figures (``Counts``). Replaying a journal at start-up folds its events into the states alone
(``fold``): what an earlier run did is not this run's work. A live run applies each event as
the journal writes it (``Journal.record``) or notes it (``Journal.note``).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.api.skew import ClockSkew
from runner.state.events import (
    RECONCILED,
    STRAGGLER,
    Ambiguous,
    Asset,
    Done,
    Event,
    JobCancelled,
    Lost,
    Refetch,
    Released,
    Reopened,
    Retry,
    Submitted,
    Submitting,
    decode,
)
from runner.state.figures import Counts, KeyFigures, ModelFigures
from runner.state.phase import Phase
from runner.state.records import (
    RecordLike,
    RecordStatus,
    ResultRecord,
    error_of,
    model_of,
    spend_of,
    status_of,
)
from runner.state.run_events import (
    Downloaded,
    KeyCooling,
    KeyInUse,
    KeyRetired,
    LeftOver,
    LostAnswer,
    LostChecked,
    Planned,
    Resumed,
    RunEvent,
    TransientError,
    Unfinished,
)

# Why a lost submit is ambiguous when the listing was read whole but matched no single job.
NO_SINGLE_MATCH = "its lost submit matches no single job"
# The reason of a Retry event that is no remote failure: the job was cancelled as the run stopped.
CANCELLED_ON_EXIT = "cancelled on exit"


@dataclass(slots=True)
class KeyState:
    """What the journal says about one job key (small: a folder may hold 100,000 of them)."""

    attempts: int = 0  # POSTs sent for this key, over all runs
    accepted: int = 0  # remote jobs created for it in the current round of attempts
    job_id: str | None = None  # the remote job currently ours, not yet finished
    submitted_at: float | None = None  # when that job was submitted
    answered_at: float | None = None  # when its POST was answered: the job existed by then
    pending_since: float | None = None  # a POST went out at this time and its answer is unknown
    pending_skew: ClockSkew | None = None  # the server's clock as known when it went out
    candidates: tuple[str, ...] = ()  # ambiguous: the remote jobs that could be ours
    doubt: str | None = None  # ambiguous: why no job could be proven ours (or none)
    done: RecordStatus | None = None  # once finished
    done_at: int | None = None  # where the `done` line (the full record) starts in the journal
    done_units: float = 0.0  # its estimated cost in compute units, when it has no USD price
    done_usd: float = 0.0  # its estimated cost in US dollars
    done_error: str | None = None
    account: str | None = None  # the fingerprint of the key its last POST went with
    refetching: bool = False  # finished, its image lost: fetched again from its job (no POST)
    straggled: int = 0  # its jobs cancelled for running far past their model's time
    phase: Phase = Phase.NEW  # where it stands: set by the fold alone, from the fields above

    @property
    def remote(self) -> bool:
        """An earlier POST may have created a job that is not finished: poll, never resend."""
        return self.done is None and not self.settled

    @property
    def settled(self) -> bool:
        """No POST of this key may still hold a job we do not know: a new POST pays once."""
        return self.job_id is None and self.pending_since is None and self.doubt is None

    def _reopen(self) -> None:
        """Forget an outcome so the job runs again (the fold's, for Released and Reopened)."""
        self.done, self.done_at, self.done_error, self.accepted = None, None, None, 0

    def _phase(self) -> Phase:
        """The phase the fields say (the fold sets ``phase`` from it after each event)."""
        if self.done is not None:
            return Phase.FAILED if self.done == RecordStatus.FAILED else Phase.DONE
        if self.job_id is not None:
            return Phase.RUNNING
        if self.pending_since is not None:
            return Phase.SUBMITTING
        if self.doubt is not None:
            return Phase.AMBIGUOUS
        return Phase.NEW


@dataclass(slots=True)
class RunLedger:
    """Every key's state, the remote job ids the folder knows, and the measured clock skew."""

    states: dict[str, KeyState] = field(default_factory=dict)
    known_ids: set[str] = field(default_factory=set)
    skew: ClockSkew = field(default_factory=ClockSkew)
    assets: dict[str, str] = field(default_factory=dict)  # uploaded files: sha256 → URL
    counts: Counts = field(default_factory=Counts)  # this run's figures

    def state(self, key: str) -> KeyState:
        state = self.states.get(key)
        if state is None:  # the key interned: the engine's list of keys shares its string
            state = self.states[sys.intern(key)] = KeyState()
        return state

    def apply(self, event: Event | RunEvent, offset: int | None = None) -> None:
        """The run's one fold: a journal event changes a job's state and this run's figures;
        a noted event changes the figures alone."""
        if isinstance(event, RunEvent):
            _count_noted(self.counts, event)
            return
        again = isinstance(event, Done) and self.state(event.key).refetching
        apply_to_states(self, event, offset)
        _count_journaled(self.counts, event, again)
        if isinstance(event, Submitted | Done):
            _count_by_account(self.counts, event, self.states[event.key].account)


def _count_by_account(counts: Counts, event: Submitted | Done, account: str | None) -> None:
    """A pool's figures per key: jobs submitted, finished and paid for with each."""
    if account is None or (figures := counts.by_account.get(account)) is None:
        return
    if isinstance(event, Submitted):
        figures.submits += 1
        return
    status = status_of(event.record)
    figures.add_spend(*spend_of(event.record))  # an ambiguous job's candidates too
    if status == RecordStatus.COMPLETED:
        figures.completed += 1
    elif status == RecordStatus.FAILED:
        figures.failed += 1


def _count_journaled(counts: Counts, event: Event, again: bool = False) -> None:
    """``again``: a Done of a job fetched again, paid for once already."""
    match event:
        case Submitted(adopted=adopted):
            counts.submits += 1
            counts.adopted += adopted
        case Retry(error=error) if error != CANCELLED_ON_EXIT:
            counts.retries += 1
        case JobCancelled(why=why) if why == STRAGGLER:
            counts.stragglers += 1
        case JobCancelled(why=why) if why == RECONCILED:
            counts.reconciled += 1
        case Ambiguous():
            counts.unmatched += 1
        case Refetch():
            counts.refetched += 1
        case Done(_, record):
            model = counts.by_model.get(model_of(record))
            if model is not None:
                model.finished += 1
            status = status_of(record)
            if not again:  # an ambiguous job's cost is its billed candidates'
                counts.add_spend(*spend_of(record))
            if status == RecordStatus.COMPLETED:
                counts.completed += 1
            elif status == RecordStatus.AMBIGUOUS:
                counts.ambiguous_jobs += 1
            else:
                counts.failed += 1


def _count_noted(counts: Counts, event: RunEvent) -> None:
    match event:
        case Planned(by_model, accounts, failed_before, ambiguous_before):
            counts.failed_before += failed_before
            counts.ambiguous_before += ambiguous_before
            for account in accounts:
                counts.by_account.setdefault(account, KeyFigures())
            for model, (finished, jobs) in by_model.items():
                counts.total += jobs
                counts.skipped += finished
                per_model = counts.by_model.setdefault(model, ModelFigures())
                per_model.finished += finished
                per_model.jobs += jobs
        case Resumed():
            counts.resumed += 1
        case TransientError(status, overload):
            counts.transient_errors += 1
            if status == 429:
                if overload:
                    counts.overload_429 += 1
                else:
                    counts.rate_limited_429 += 1
        case LostAnswer():
            counts.lost_answers += 1
        case LostChecked(resent, unchecked):
            counts.resent += resent
            counts.unchecked += unchecked
        case KeyRetired(account, reason):
            counts.by_account.setdefault(account, KeyFigures()).retired = reason
        case KeyInUse(account, place):
            counts.by_account.setdefault(account, KeyFigures()).place = place
        case KeyCooling(account, reason):
            counts.by_account.setdefault(account, KeyFigures()).cooling = reason
        case Downloaded(size):
            counts.downloads += 1
            counts.bytes += size
        case Unfinished(_, why):
            match why:
                case LeftOver.DEFERRED:
                    counts.deferred += 1
                case LeftOver.CANCELLED:
                    counts.cancelled += 1
                case LeftOver.OVER_BUDGET:
                    counts.over_budget += 1
                case LeftOver.UNPRICED:
                    counts.unpriced += 1
                case LeftOver.NOT_STARTED:
                    counts.not_started += 1


def apply_to_states(ledger: RunLedger, event: Event, offset: int | None = None) -> None:
    """Change the jobs' states as one journal event says (replay: no figure changes)."""
    if isinstance(event, Asset):
        ledger.assets[event.sha256] = event.url
        return
    state = ledger.state(event.key)
    match event:
        case Done(_, record):  # nine lines in ten of a long journal: its phase said directly
            _finished(state, record, offset)
            return
        case Refetch(_, job_id):
            state.done = state.done_at = state.done_error = None
            state.job_id, state.refetching, state.accepted = job_id, True, 1
            state.pending_since = state.pending_skew = None
        case Submitting(_, attempt, at, low, high, account):
            state.account = account
            state.attempts = max(state.attempts, attempt)
            state.pending_since = at
            state.pending_skew = None
            if low is not None and high is not None:
                state.pending_skew = ClockSkew(low, high, measured=True)
            state.candidates, state.doubt = (), None
        case Submitted(_, _, job_id, sent, answered, created, adopted, account):
            state.job_id = job_id
            state.account = account
            state.pending_since = state.pending_skew = state.doubt = None
            state.accepted += 1
            state.submitted_at, state.answered_at = sent, answered
            ledger.known_ids.add(job_id)
            # An adopted job's times say nothing of the clocks: only answered POSTs measure them.
            if sent is not None and answered is not None and created is not None and not adopted:
                ledger.skew = ledger.skew.observe(sent, answered, created)
        case Lost():  # proven to have made nothing: a job it was in doubt about too
            state.pending_since = state.pending_skew = None
            state.candidates, state.doubt = (), None
        case Retry():
            state.job_id = None
        case JobCancelled(_, _, job_id, why):
            ledger.known_ids.add(job_id)  # ours: never a lost POST's candidate
            if state.job_id == job_id:  # read back cancelled, not billed: it may go again
                state.job_id = None
                state.straggled += why == STRAGGLER
        case Ambiguous(_, _, candidates, why):
            state.pending_since = state.pending_skew = None
            state.candidates = candidates
            state.doubt = why or NO_SINGLE_MATCH
            ledger.known_ids.update(candidates)
        case Released():
            state._reopen()
            state.candidates, state.doubt = (), None
        case Reopened():
            if state.done == RecordStatus.FAILED:
                state._reopen()
    state.phase = state._phase()


def _finished(state: KeyState, record: RecordLike, offset: int | None) -> None:
    """A Done line: the job's record is written (at ``offset`` in the journal)."""
    done = state.done = status_of(record)
    state.done_at = offset
    usd, units = spend_of(record)
    state.done_usd, state.done_units = _shared(usd), _shared(units)
    # A finished job's times are in its record: 100,000 finished jobs keep no floats.
    state.submitted_at = state.answered_at = None
    state.done_error = error_of(record)
    state.job_id = state.pending_since = state.pending_skew = None
    if state.done != RecordStatus.AMBIGUOUS:
        state.candidates, state.doubt = (), None  # an ambiguous job keeps them
    elif state.doubt is None:  # a folder rebuilt from results.jsonl
        state.doubt = error_of(record) or "ambiguous"
    state.accepted = 0
    state.refetching = False
    state.phase = Phase.FAILED if done == RecordStatus.FAILED else Phase.DONE


_PRICES: dict[float, float] = {}


def _shared(value: float) -> float:
    """One float object per price: a folder's jobs cost a handful of distinct amounts."""
    if len(_PRICES) < 4096:
        return _PRICES.setdefault(value, value)
    return value


def fold(events: Iterable[tuple[int, Event | dict[str, Any]]]) -> RunLedger:
    """Fold ``(offset, event)`` pairs into a ledger (a journal line's JSON object is decoded;
    one of the wrong shape changes nothing)."""
    ledger = RunLedger()
    for offset, event in events:
        typed = decode(event) if isinstance(event, dict) else event
        if typed is not None:
            apply_to_states(ledger, typed, offset)
    return ledger


def folder_counts(ledger: RunLedger) -> Counts:
    """What a folder holds, over all its runs: the counts of its finished jobs, and its spend."""
    counts = Counts(total=len(ledger.states))
    for state in ledger.states.values():
        counts.add_spend(state.done_usd, state.done_units)  # an ambiguous job's candidates too
        if state.done == RecordStatus.COMPLETED:
            counts.completed += 1
        elif state.doubt is not None:  # finished ambiguous, or yet to collect its candidates
            counts.ambiguous_jobs += 1
        elif state.done is not None:
            counts.failed += 1
    return counts


def counts_of(records: Sequence[ResultRecord]) -> Counts:
    """The counts of a finished set of records (a merge), through the same fold: planned,
    as a run plans its jobs, then each one done."""
    ledger = RunLedger()
    by_model = Counter(model_of(record) for record in records)
    ledger.apply(Planned({model: (0, jobs) for model, jobs in by_model.items()}, (), 0, 0))
    for record in records:
        ledger.apply(Done(record.key, record))
    return ledger.counts
