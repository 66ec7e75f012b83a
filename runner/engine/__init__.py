"""The engine package: a run's task group, submits, tracking, outcomes and retries.

engine.py     task group, producer and workers
options.py    EngineOptions: how a run behaves beyond the manifest's settings
stopping.py   stop → drain → abort: signals, deadline, 401/402, a failing disk
submitter.py  parallel POSTs, write-ahead journal lines, the barrier and matching rounds
matching.py   pure: which listed job a lost POST created
tracker.py    following a job to its end (polls, webhooks), downloads with URL refresh
watching.py   a job's watch, and the listing pass that looks at every job in flight
outcome.py    how a job ends, as values
retry.py      the one retry loop and the injectable clock
budget.py     --budget, reserved before each POST
coordinator.py  what the processes of a split share (--coordinator): slots, rate, budget
ambiguity.py  the worst case of sending ambiguous jobs again
uploads.py    local reference images, uploaded once before the first POST needing them

The figures it fills (Counts, RunStats, RunResult) live below it, in runner.state.figures.
"""

from runner.engine.engine import Engine
from runner.engine.options import EngineOptions
from runner.engine.retry import Clock, RetryPolicy, SystemClock
from runner.state.figures import Counts, RunResult, RunStats

__all__ = [
    "Clock",
    "Counts",
    "Engine",
    "EngineOptions",
    "RetryPolicy",
    "RunResult",
    "RunStats",
    "SystemClock",
]
