"""What a run did: its counts (changed by the ledger's fold alone), ``RunStats`` (the one shape
every view reads) and the result with its exit code. Below the engine and the views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from runner.exitcodes import ExitCode


@dataclass
class KeyFigures:
    """One key of a pool: the jobs it took and what they cost."""

    submits: int = 0
    completed: int = 0
    failed: int = 0
    spend_usd: float = 0.0
    spend_units: float = 0.0
    retired: str | None = None  # why it takes no more jobs
    place: str | None = None  # where the user put it: "key 2 of keys.txt"
    cooling: str | None = None  # why its submits went to other keys for a while (last time)

    def add_spend(self, usd: float, units: float) -> None:
        self.spend_usd += usd
        self.spend_units += units

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["spend_usd"] = round(self.spend_usd, 4)
        data["spend_units"] = round(self.spend_units, 3)
        return data


@dataclass(slots=True)
class ModelFigures:
    """One model's jobs in a run: finished (this run or before) of all it has."""

    finished: int = 0
    jobs: int = 0


@dataclass
class Counts:
    """What happened during a run."""

    total: int = 0
    completed: int = 0
    failed: int = 0
    ambiguous_jobs: int = 0  # ended ambiguous: a lost answer no listing could attribute
    skipped: int = 0  # finished in an earlier run (counted before anything is sent)
    failed_before: int = 0  # ... of them failed, and not sent again (no --retry-failed)
    ambiguous_before: int = 0  # ... of them ambiguous, and not released (--retry-ambiguous)
    resumed: int = 0  # already submitted by an earlier run, polled again
    deferred: int = 0  # left for the next run (download or check failed)
    cancelled: int = 0  # cancelled, unbilled, as the run stopped; the next run submits them
    stragglers: int = 0  # jobs far past their model's time: cancelled (unbilled), sent again
    reconciled: int = 0  # jobs of an exclusive account's lost answers cancelled unbilled
    not_started: int = 0  # never submitted because the run stopped early
    submits: int = 0  # POSTs accepted by the server
    retries: int = 0  # resubmits after a remote failure
    refetched: int = 0  # finished jobs whose lost images were fetched again (never resent)
    lost_answers: int = 0  # POSTs whose answer was lost
    adopted: int = 0  # ... whose job the listing showed: adopted, not sent again
    resent: int = 0  # ... which created nothing: sent again
    unmatched: int = 0  # ... which could not be told apart: the job ends ambiguous
    unchecked: int = 0  # ... which could not be checked in this run (the listing failed)
    over_budget: int = 0  # not submitted: it would have taken the spend over --budget
    unpriced: int = 0  # not submitted: --budget cannot price its model
    overload_429: int = 0  # "maximum number of concurrent jobs"
    rate_limited_429: int = 0  # "too many requests"
    transient_errors: int = 0
    downloads: int = 0
    bytes: int = 0
    spend_units: float = 0.0  # of finished jobs without a USD price
    spend_usd: float = 0.0
    by_model: dict[str, ModelFigures] = field(default_factory=dict)
    # A pool of keys: each key's figures, by its fingerprint (one key: empty).
    by_account: dict[str, KeyFigures] = field(default_factory=dict)

    def add_spend(self, usd: float, units: float) -> None:
        """Count a finished job's cost (runner.state.records.spend_of)."""
        self.spend_usd += usd
        self.spend_units += units

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.ambiguous_jobs + self.skipped

    @property
    def finished_now(self) -> int:
        """Jobs this run brought to an outcome."""
        return self.completed + self.failed + self.ambiguous_jobs

    @property
    def unfinished(self) -> int:
        """Jobs this run did not bring to an outcome: the next run continues them."""
        return max(0, self.total - self.finished)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["unfinished"] = self.unfinished
        data["spend_units"] = round(self.spend_units, 3)
        data["spend_usd"] = round(self.spend_usd, 4)
        # As summary.json has always written it: model → [finished, jobs].
        data["by_model"] = {m: [f.finished, f.jobs] for m, f in self.by_model.items()}
        data["by_account"] = {key: f.to_json() for key, f in self.by_account.items()}
        if not self.by_account:
            del data["by_account"]
        return data


@dataclass
class RunResult:
    """The outcome of ``run_batch``: counts, the reason it stopped early (if it did), files."""

    counts: Counts
    stopped: str | None = None  # "interrupted", "fatal: …" or None
    fatal: bool = False
    advice: str | None = None  # what would help, when not "run the same command again"
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return ExitCode.FATAL
        if self.stopped or self.counts.unfinished > self.counts.deferred:
            return ExitCode.STOPPED
        if self.counts.failed or self.counts.ambiguous_jobs or self.counts.deferred:
            return ExitCode.FAILED
        if self.counts.failed_before or self.counts.ambiguous_before:
            return ExitCode.FAILED  # the folder still holds them: a rerun is no success
        return ExitCode.OK


REQUEST_KINDS = ("submit", "list", "job", "cancel", "download", "asset")


def requests_per_job(requests: Mapping[str, int], jobs: int) -> dict[str, float]:
    """Requests of each kind per job brought to an outcome, and ``api``: all but downloads."""
    shares = {kind: round(requests.get(kind, 0) / max(1, jobs), 3) for kind in REQUEST_KINDS}
    api = sum(n for kind, n in requests.items() if kind != "download")
    return {"api": round(api / max(1, jobs), 3), **shares}


@dataclass(frozen=True, slots=True)
class RunStats:
    """A run's figures at one moment: the one shape that progress, status.json, the metrics
    and summary.json read. ``counts`` is a copy of the ledger's (runner.state.ledger)."""

    started: float
    now: float
    counts: Counts
    in_flight: int = 0  # jobs holding a slot: submitting or running remotely
    posting: int = 0  # POSTs on the wire
    requests: Mapping[str, int] = field(default_factory=dict)  # sent by kind (REQUEST_KINDS)
    running: Mapping[str, int] = field(default_factory=dict)  # a pool: jobs in flight per key

    @property
    def done(self) -> int:
        """Jobs completed, in this run or an earlier one."""
        return self.counts.completed + self.counts.skipped

    @property
    def jobs_per_second(self) -> float:
        """Jobs this run brought to an outcome, per second since it started."""
        return self.counts.finished_now / max(1e-6, self.now - self.started)

    @property
    def eta_seconds(self) -> float | None:
        rate, left = self.jobs_per_second, self.counts.unfinished
        return left / rate if rate > 0 and left else None

    @property
    def rate_limited(self) -> int:
        """429s seen, of both kinds."""
        return self.counts.overload_429 + self.counts.rate_limited_429

    @property
    def per_job(self) -> dict[str, float]:
        return requests_per_job(self.requests, self.counts.finished_now)


def stats_of(
    counts: Counts,
    started: float,
    now: float,
    *,
    in_flight: int = 0,
    posting: int = 0,
    requests: Mapping[str, int] | None = None,
    running: Mapping[str, int] | None = None,
) -> RunStats:
    """Freeze ``counts`` (copied: the ledger goes on changing its own) into ``RunStats``."""
    copied = replace(
        counts,
        by_model={m: replace(f) for m, f in counts.by_model.items()},
        by_account={a: replace(f) for a, f in counts.by_account.items()},
    )
    return RunStats(
        started, now, copied, in_flight, posting, dict(requests or {}), dict(running or {})
    )
