"""The engine package: a run as a scheduler of parts, each job a flow of phases.

engine.py      the scheduler: survey, producer, workers, stop, drain
assembly.py    the one place a run's parts are built whole (pool, accounts, flow)
flow.py        JobFlow.run(spec): one job's life as a match on its phase
survey.py      the pass before anything is sent: jobs counted, names checked, resumes found
submitter.py   parallel POSTs and their write-ahead journal lines
lost_round.py  lost answers: the barrier and the listing round that settles them
matching.py    pure: which listed job a lost POST created
tracker.py     following a job to its end (polls, webhooks), downloads with URL refresh
watching.py    a job's watch, and the listing pass that looks at every job in flight
accounts.py    the pool of keys: one queue of jobs waiting for room on any key
key_care.py    keys refused (retired) or unwell (cooling), and the stop when none is left
stopper.py     stop → drain → abort: signals, deadline, 401/402, a failing disk
keeper.py      the writer kept in step with the journal (open, check, close, mend)
outcome.py     how a submit and a job end, as values
result.py      the run's result once its writer is closed
options.py     EngineOptions: how a run behaves beyond the manifest's settings
retry.py       the one retry loop, on the injected clock (runner.clock)
budget.py      --budget, reserved before each POST
coordinator.py what the processes of a split share (--coordinator): slots, rate, budget
ambiguity.py   the worst case of sending ambiguous jobs again
uploads.py     local reference images, uploaded once before the first POST needing them
health.py      a key's patience and cooldown

The state it reads and folds (phases, events, journal, counts) is runner.state; the API it
talks to is the runner.api.port.Api protocol.
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
