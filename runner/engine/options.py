"""How a run behaves beyond the manifest's run settings: the CLI's run flags, as one value."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.api.webhooks import HookAddress
from runner.engine.retry import RetryPolicy


@dataclass(frozen=True)
class EngineOptions:
    """How a run behaves beyond the manifest's run settings."""

    retry_failed: bool = False
    retry_ambiguous: bool = False  # send ambiguous jobs again, after saying the worst case
    limit: int | None = None  # only the first N jobs of the manifest
    drain_timeout: float = 120.0  # after the first signal, wait this long for jobs in flight
    cancel_on_exit: bool = False  # cancel remote jobs still running when interrupted
    handle_signals: bool = True
    api_timeout: float = 30.0
    download_stall: float = 30.0  # a download bringing less than 1 KiB in this long is retried
    deadline: float | None = None  # epoch seconds: stop submitting then, drain, exit 3
    deadline_flag: str = "--deadline"  # the flag that set it (--deadline or --max-runtime)
    budget: float | None = None  # the spend this run may commit to, in budget_unit
    budget_unit: str = "usd"  # usd or cu (compute units)
    shard: tuple[int, int] | None = None  # (I, N): only the jobs of shard I of N
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # backoffs for transient errors
    webhook: HookAddress | None = None  # each submit's X-Webhook-URL: its key, signed
    embed_metadata: bool = True  # write prompt, model, seed, … into each image
    # A pool's key refused this long in a row hands the jobs it has not created to the other
    # keys, and takes none for key_cooldown seconds (doubled each time in a row).
    key_patience: float = 20.0
    key_cooldown: float = 30.0
    # Keys nobody else submits with, by fingerprint (ALL_KEYS: every key of the run): a lost
    # answer's unclaimed jobs are ours, cancelled and read back rather than left ambiguous.
    exclusive: frozenset[str] = frozenset()
    siblings: str | None = None  # a glob naming the split's other shard folders


ALL_KEYS = "*"  # in EngineOptions.exclusive: every key (--exclusive-account)
