"""Parallel submits on virtual time: POSTs in flight, the barrier, matching rounds, crashes.

Every test runs the real ``Submitter`` and journal against ``FakeApi`` (an in-memory account on
the same virtual clock), so each case is deterministic and takes milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from runner.api.backoff import Backoff
from runner.api.limiter import AdaptiveLimit
from runner.engine.budget import Budget
from runner.engine.health import Health
from runner.engine.lost_round import Ownership
from runner.engine.outcome import Deferred, NotSubmitted, Sent, Submission
from runner.engine.retry import RetryPolicy
from runner.engine.submitter import SubmitSettings, Submitter
from runner.engine.uploads import Uploads
from runner.errors import PermanentApiError
from runner.jobspec import JobSpec
from runner.state.figures import Counts
from runner.state.journal import Journal
from runner.state.ledger import KeyState
from tests.fake_api import FakeApi
from tests.virtual_time import START, VirtualClock, inline_offload, virtual_time

FLUX = "/generate/image/bfl/flux-1-dev"


def spec(i: int) -> JobSpec:
    return JobSpec(
        key=f"{i:016x}",
        index=i,
        entry=0,
        name=None,
        model="flux-1-dev",
        endpoint=FLUX,
        body={"prompt": f"job {i}"},
        replica=0,
        seed=None,
        vars={},
        units=1.0,
    )


@dataclass
class Rig:
    clock: VirtualClock
    api: FakeApi
    journal: Journal
    submitter: Submitter
    counts: Counts
    writes: list[int]  # lines carried by each journal write

    def state(self, i: int) -> KeyState:
        return self.journal.ledger.state(spec(i).key)

    async def lines(self) -> list[dict[str, object]]:
        await self.journal.flush()
        return [json.loads(line) for line in self.journal.path.read_text().splitlines()]

    async def submit_all(self, count: int) -> dict[int, Submission]:
        outcomes: dict[int, Submission] = {}

        async def one(i: int) -> None:
            outcomes[i] = await self.submitter.submit(spec(i), self.state(i))

        async with anyio.create_task_group() as group:
            for i in range(count):
                group.start_soon(one, i)
        return outcomes


@contextlib.asynccontextmanager
async def rig_on(
    tmp_path: Path,
    *,
    concurrency: int = 4,
    budget: float | None = None,
    skew: float = 0.0,
    api: FakeApi | None = None,
    owner: Ownership | None = None,
) -> AsyncIterator[Rig]:
    """A submitter with its journal, in front of a FakeApi, all on one virtual clock."""
    clock = api.clock if api is not None else VirtualClock()
    async with virtual_time(clock):
        api = api or FakeApi(clock, skew=skew)
        rig = make_rig(tmp_path, clock, api, concurrency, budget, owner)
        try:
            yield rig
        finally:
            rig.journal.close()


def make_rig(
    tmp_path: Path,
    clock: VirtualClock,
    api: FakeApi,
    concurrency: int = 4,
    budget: float | None = None,
    owner: Ownership | None = None,
) -> Rig:
    writes: list[int] = []
    journal = Journal.open(tmp_path / "journal.jsonl", offload=inline_offload(writes))
    retry = RetryPolicy(errors=Backoff(base=1.0, jitter=0), throttled=Backoff(base=5.0, jitter=0))
    rng = random.Random(0)
    submitter = Submitter(
        api,
        journal,
        clock,
        api.server_clock,
        SubmitSettings(
            concurrency=concurrency, lost_answer_wait=1.0, api_timeout=30.0, retry=retry
        ),
        budget=Budget(budget, "cu"),
        gate=AdaptiveLimit(64, clock=clock.monotonic),
        stopping=lambda: False,
        rng=rng,
        uploads=Uploads(api, journal, clock, retry, {}, rng),
        health=Health(),
        owner=owner,
    )
    return Rig(clock, api, journal, submitter, journal.ledger.counts, writes)


def events(api: FakeApi, what: str) -> list[float]:
    return [t for t, kind, _ in api.log if kind.startswith(what)]


async def test_posts_ramp_up_to_the_window_and_share_their_write_ahead_fsyncs(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path) as rig:
        outcomes = await rig.submit_all(24)
        assert all(isinstance(outcome, Sent) for outcome in outcomes.values())
        assert all(rig.state(i).job_id for i in range(24))
        assert rig.api.most_in_flight == 4
        assert len(rig.api.jobs) == 24
        kinds = [line["e"] for line in await rig.lines()]
        assert kinds.count("submitting") == kinds.count("submitted") == 24
        # Three POSTs going out together wrote their write-ahead lines in one fsync.
        assert max(rig.writes) >= 3
        assert len(rig.writes) < len(kinds)


async def test_a_lost_answer_holds_new_posts_until_the_listing_has_told(tmp_path: Path) -> None:
    async with rig_on(tmp_path) as rig:
        # POST 1 alone, then 2-5 together: the first of them loses its answer, the next is slow.
        rig.api.fates.extend(["ok", "lost", "slow", "ok", "ok"])
        outcomes = await rig.submit_all(12)
        assert all(isinstance(outcome, Sent) for outcome in outcomes.values())
        lost_at = events(rig.api, "answer:lost")[0]
        slow_at = events(rig.api, "answer:slow")[0]
        [listed_at] = events(rig.api, "list")
        assert lost_at < slow_at
        assert listed_at >= slow_at + 1.0  # the POST in flight settled, then the wait
        assert not [t for t in events(rig.api, "post") if lost_at <= t <= listed_at]
        assert [len(rig.api.jobs_for(f"job {i}")) for i in range(12)] == [1] * 12
        assert rig.counts.adopted == 1
        adopted = [line for line in await rig.lines() if line.get("adopted")]
        assert [(a["k"], a["id"]) for a in adopted] == [
            (spec(1).key, rig.api.jobs_for("job 1")[0].job_id)
        ]


async def test_a_lost_post_that_created_nothing_is_sent_again_once(tmp_path: Path) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.fates.extend(["5xx"])
        await rig.submit_all(1)
        assert rig.counts.resent == 1
        assert len(events(rig.api, "post")) == 2
        assert len(rig.api.jobs_for("job 0")) == 1
        assert rig.state(0).job_id == rig.api.jobs[0].job_id


async def test_a_post_that_never_left_is_sent_again_without_looking(tmp_path: Path) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.fates.extend(["unsent", "unsent"])
        await rig.submit_all(1)
        assert events(rig.api, "list") == []  # no search: it never left
        assert rig.counts.lost_answers == 0
        assert rig.counts.transient_errors == 2
        assert rig.state(0).job_id is not None


async def test_two_lost_posts_in_one_window_end_ambiguous_and_are_not_sent_again(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.fates.extend(["ok", "lost", "lost"])  # POSTs 2 and 3 fly together
        outcomes = await rig.submit_all(3)
        assert sorted(type(o).__name__ for o in outcomes.values()) == ["Doubted", "Doubted", "Sent"]
        both = {j.job_id for j in rig.api.jobs if j.prompt in ("job 1", "job 2")}
        lost = [i for i in range(3) if rig.state(i).candidates]
        assert len(lost) == 2
        for i in lost:
            assert set(rig.state(i).candidates) == both
            assert rig.state(i).job_id is None
        assert len(rig.api.jobs) == 3  # nothing sent again
        assert rig.counts.unmatched == 2


async def test_a_2xx_answer_tells_which_of_two_overlapping_posts_created_the_job(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.fates.extend(["ok", "garbled", "dropped"])
        await rig.submit_all(3)
        assert rig.counts.adopted == 1
        assert rig.counts.resent == 1
        assert [len(rig.api.jobs_for(f"job {i}")) for i in range(3)] == [1, 1, 1]
        assert all(rig.state(i).job_id for i in range(3))


async def test_another_clients_job_in_the_window_makes_it_ambiguous(tmp_path: Path) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.fates.extend(["lost"])
        async with anyio.create_task_group() as group:
            group.start_soon(rig.submit_all, 1)
            await rig.clock.sleep(0.05)
            theirs = rig.api.create(None)  # stamped while our POST is on the wire
        ours = rig.api.jobs_for("job 0")[0]
        assert set(rig.state(0).candidates) == {ours.job_id, theirs.job_id}
        assert len(rig.api.jobs_for("job 0")) == 1


async def test_another_clients_job_outside_the_window_changes_nothing(tmp_path: Path) -> None:
    async with rig_on(tmp_path, concurrency=1) as rig:
        await rig.submit_all(2)  # answered POSTs measure the clocks: the window is now tight
        rig.api.create(None, at=rig.clock.now - 3.0)
        rig.api.fates.extend(["lost"])
        await rig.submitter.submit(spec(2), rig.state(2))
    assert rig.state(2).job_id == rig.api.jobs_for("job 2")[0].job_id


@pytest.mark.parametrize("skew", [3.0, -3.0])
async def test_skew_in_either_direction_is_measured_and_the_window_follows_it(
    tmp_path: Path, skew: float
) -> None:
    async with rig_on(tmp_path, concurrency=1, skew=skew) as rig:
        await rig.submit_all(3)  # three answered POSTs measure the skew
        assert rig.journal.ledger.skew.low == pytest.approx(skew - 0.05, abs=0.01)
        rig.api.fates.extend(["lost"])
        # Another client's job stamped where ours would be if the skew were read wrong (on an
        # unskewed clock, or with the wrong sign: never in the server's future).
        stamp = rig.clock.now + 0.05 + (0.0 if skew > 0 else 2 * skew)
        rig.api.create(None, at=stamp - skew)
        outcome = await rig.submitter.submit(spec(3), rig.state(3))
    assert isinstance(outcome, Sent)
    assert outcome.job_id == rig.state(3).job_id
    assert rig.state(3).job_id == rig.api.jobs_for("job 3")[0].job_id


async def test_a_crash_with_several_pending_submits_is_matched_on_the_next_start(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    t0 = START - 600.0
    api = FakeApi(clock)
    path = tmp_path / "journal.jsonl"
    known = api.create("known", at=t0 + 0.06)  # a job the journal already holds
    adopt = api.create("job 0", at=t0 + 0.05)
    pair = [api.create("job 2", at=t0 + 200.05), api.create("job 3", at=t0 + 200.06)]
    lines = [
        {"e": "submitting", "k": "known", "a": 1, "t": t0},
        {"e": "submitted", "k": "known", "a": 1, "id": known.job_id, "ts": t0, "tr": t0 + 0.1}
        | {"c": known.created},  # a journal from before 0.2 (no clock bounds on its lines)
        {"e": "submitting", "k": spec(0).key, "a": 1, "t": t0},
        {"e": "submitting", "k": spec(1).key, "a": 1, "t": t0 + 100.0},
        {"e": "submitting", "k": spec(2).key, "a": 1, "t": t0 + 200.0},
        {"e": "submitting", "k": spec(3).key, "a": 1, "t": t0 + 200.01},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    async with rig_on(tmp_path, api=api) as rig:
        await rig.submitter.recover(rig.journal.ledger.states, run_started=clock.now)
    assert rig.state(0).job_id == adopt.job_id
    assert (rig.state(1).pending_since, rig.state(1).job_id) == (None, None)  # send again
    for i in (2, 3):
        assert set(rig.state(i).candidates) == {j.job_id for j in pair}
    assert api.lists == 1


async def test_a_crash_before_any_answer_with_no_clock_reading_leaves_submits_ambiguous(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    api = FakeApi(clock)
    path = tmp_path / "journal.jsonl"
    line = {"e": "submitting", "k": spec(0).key, "a": 1, "t": START - 60.0}
    path.write_text(json.dumps(line) + "\n")
    async with rig_on(tmp_path, api=api) as rig:
        await rig.submitter.recover(rig.journal.ledger.states, run_started=clock.now)
    assert rig.state(0).doubt is not None  # nothing read the server's clock before it went out


async def test_the_budget_stays_exact_with_posts_in_parallel(tmp_path: Path) -> None:
    async with rig_on(tmp_path, concurrency=8, budget=3.0) as rig:
        outcomes = await rig.submit_all(8)
    refused = [o for o in outcomes.values() if isinstance(o, NotSubmitted)]
    assert len(refused) == 5
    assert all(o.over_budget for o in refused)
    assert len(rig.api.jobs) == 3


async def test_a_listing_refused_while_matching_defers_the_job_and_keeps_it_pending(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path) as rig:

        async def refused(limit: int = 100, cursor: str | None = None) -> None:
            raise PermanentApiError("GET /jobs: 400 cursor must be a date")

        rig.api.list_jobs = refused  # type: ignore[method-assign,assignment]
        rig.api.fates.extend(["lost"])
        outcomes = await rig.submit_all(1)
    assert isinstance(outcomes[0], Deferred)
    assert rig.state(0).pending_since is not None  # the next run looks again
    assert len(rig.api.jobs_for("job 0")) == 1  # and nothing was sent twice


async def test_a_lone_posts_answer_reaches_the_disk_before_the_next_post_leaves(
    tmp_path: Path,
) -> None:
    # A nearby API: one POST at a time. Its answer is not waited for on disk (one fsync a POST
    # instead of two), and the next POST's write-ahead line carries it there first, so a power
    # cut never leaves two answerless POSTs whose windows overlap.
    clock = VirtualClock()
    async with rig_on(tmp_path, api=FakeApi(clock, rtt=0.01)) as rig:
        on_disk: list[list[str]] = []
        create = rig.api.create

        def seen_on_disk_then_create(prompt: str) -> object:
            lines = rig.journal.path.read_text().splitlines()
            on_disk.append([f"{json.loads(line)['e']} {json.loads(line)['k']}" for line in lines])
            return create(prompt)

        rig.api.create = seen_on_disk_then_create  # type: ignore[method-assign,assignment]
        await rig.submitter.submit(spec(0), rig.state(0))
        assert rig.state(0).job_id is not None
        assert f"submitted {spec(0).key}" not in rig.journal.path.read_text().replace('"', "")
        await rig.submitter.submit(spec(1), rig.state(1))
        first, second = on_disk
        assert first == [f"submitting {spec(0).key}"]
        assert second[:3] == [
            f"submitting {spec(0).key}",
            f"submitted {spec(0).key}",
            f"submitting {spec(1).key}",
        ]
    kinds = [
        json.loads(line)["e"] for line in (tmp_path / "journal.jsonl").read_text().splitlines()
    ]
    assert kinds == ["submitting", "submitted", "submitting", "submitted"]  # close wrote the last
