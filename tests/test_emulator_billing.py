"""The emulator bills as Krea does: on completion only; a DELETE cancels a job that has not
ended and loses its race with one that has; stuck jobs stay queued; stats count paid jobs."""

from __future__ import annotations

from typing import Any

from runner.emulator.config import EmulatorConfig, Latency
from runner.emulator.core import EmulatorCore

BODY = {"prompt": "a red fox", "width": 512, "height": 512, "seed": 7}
FLUX = "/generate/image/bfl/flux-1-dev"
BASE = "http://emulator"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def core(clock: Clock, **knobs: Any) -> EmulatorCore:
    config = EmulatorConfig(latency=Latency.parse("fixed:10"), **knobs)
    return EmulatorCore(config, clock=clock)


def submit(emulator: EmulatorCore, seed: int = 7, token: str = "t") -> str:
    account = emulator.account_for(token)
    assert account is not None
    answer = emulator.submit(account, FLUX, {**BODY, "seed": seed}, None, BASE)
    assert answer.status == 200, answer.data
    job_id: str = answer.data["job_id"]
    return job_id


def status(emulator: EmulatorCore, job_id: str, token: str = "t") -> str:
    account = emulator.account_for(token)
    assert account is not None
    value: str = emulator.get(account, job_id, BASE).data["status"]
    return value


def test_a_job_is_paid_when_it_completes_not_while_it_runs_nor_when_it_fails() -> None:
    clock = Clock()
    emulator = core(clock)
    submit(emulator)
    assert emulator.snapshot()["paid"] == 0, "running: not billed yet"
    assert emulator.paid_twice() == []
    clock.now += 10
    assert emulator.snapshot()["paid"] == 1
    failing = core(clock, failure_rate=1.0)
    submit(failing)
    clock.now += 10
    assert failing.snapshot()["paid"] == 0


def test_a_cancel_before_the_end_is_not_billed_and_one_after_it_is_refused() -> None:
    clock = Clock()
    emulator = core(clock)
    account = emulator.account_for("t")
    assert account is not None
    early, late = submit(emulator, 1), submit(emulator, 2)
    clock.now += 5
    assert emulator.cancel(account, early, BASE).status == 200
    clock.now += 5  # the other completes: a DELETE arriving now lost its race
    refused = emulator.cancel(account, late, BASE)
    assert refused.status == 409
    assert "completed" in refused.data["error"]
    assert (status(emulator, early), status(emulator, late)) == ("cancelled", "completed")
    stats = emulator.snapshot()
    assert (stats["paid"], stats["cancels"], stats["cancels_refused"]) == (1, 1, 1)
    # A second job for the cancelled body is no second payment.
    submit(emulator, 1)
    clock.now += 10
    assert emulator.paid_twice() == []
    assert emulator.snapshot()["paid"] == 2


def test_a_backlogged_job_can_be_cancelled_and_frees_nothing_it_did_not_hold() -> None:
    clock = Clock()
    emulator = core(clock, concurrency_limit=1, overflow="backlog")
    account = emulator.account_for("t")
    assert account is not None
    running, waiting = submit(emulator, 1), submit(emulator, 2)
    assert status(emulator, waiting) == "backlogged"
    assert emulator.cancel(account, waiting, BASE).status == 200
    third = submit(emulator, 3)
    clock.now += 10
    assert status(emulator, running) == "completed"
    assert status(emulator, third) == "queued", "it starts once the first ends"
    clock.now += 10
    assert emulator.snapshot()["paid"] == 2


def test_stuck_jobs_stay_queued_for_their_time_hold_their_slot_then_run() -> None:
    clock = Clock()
    emulator = core(clock, stuck_rate=1.0, stuck_for=600.0, concurrency_limit=1, overflow="backlog")
    stuck, behind = submit(emulator, 1), submit(emulator, 2)
    clock.now += 300
    assert (status(emulator, stuck), status(emulator, behind)) == ("queued", "backlogged")
    clock.now += 300 + 3
    assert status(emulator, stuck) == "processing"
    clock.now += 7
    assert status(emulator, stuck) == "completed"


def test_a_stuck_job_cancelled_frees_its_slot_at_once() -> None:
    clock = Clock()
    emulator = core(clock, stuck_rate=1.0, stuck_for=600.0, concurrency_limit=1, overflow="backlog")
    account = emulator.account_for("t")
    assert account is not None
    stuck, behind = submit(emulator, 1), submit(emulator, 2)
    clock.now += 30
    assert emulator.cancel(account, stuck, BASE).status == 200
    assert status(emulator, behind) == "queued", "the next job took the freed slot"
    assert emulator.snapshot()["paid"] == 0


def test_without_stuck_jobs_the_random_draws_are_those_of_before() -> None:
    """A knob left off draws nothing: a seeded fault run replays as it did."""
    clock = Clock()
    plain = core(clock, seed=3, failure_rate=0.5)
    off = core(clock, seed=3, failure_rate=0.5, stuck_for=600.0)
    ids = [submit(plain, n) for n in range(20)], [submit(off, n) for n in range(20)]
    clock.now += 10
    assert [status(plain, i) for i in ids[0]] == [status(off, i) for i in ids[1]]


def test_stats_count_paid_jobs_in_all_and_per_account() -> None:
    clock = Clock()
    emulator = core(clock, tokens=("a", "b"))
    submit(emulator, 1, "a")
    submit(emulator, 2, "b")
    submit(emulator, 3, "b")
    clock.now += 10
    stats = emulator.snapshot()
    assert stats["paid"] == 3
    by_account = stats["paid_by_account"]
    assert sorted(by_account.values()) == [1, 2]
    assert {label: each["paid"] for label, each in stats["accounts"].items()} == by_account
