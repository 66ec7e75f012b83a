"""Never a second payment, whatever the listing's order, the server's clock or its cursor.

The submitter runs against ``FakeApi`` on virtual time: first the cases that paid twice or
never ended before, then a property test that draws listing orders, page sizes, clock skews
and jumps, repeated and foreign jobs, lost answers, exclusive accounts whose lost answers'
jobs are cancelled, and cancels that race the jobs' ends, lose their answers or do not take;
it checks that no prompt ever has two jobs billed on the server, and that every job makes
progress: followed, or ended for a stated reason.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.engine.lost_round import Ownership
from runner.engine.matching import MAX_SEARCH_PAGES
from runner.engine.outcome import Deferred, Doubted, Failed, Sent, Submission
from runner.errors import WouldPayTwice
from runner.state.events import Submitting
from tests.fake_api import FakeApi
from tests.test_submitter import events, make_rig, rig_on, spec
from tests.virtual_time import START, VirtualClock, virtual_time

HOUR = 3600.0


def paid(api: FakeApi, i: int) -> int:
    """Jobs of prompt ``i`` billed or to be billed (cancelled ones are not)."""
    return len(api.billed_for(f"job {i}"))


async def test_a_listing_oldest_first_is_read_to_its_end_and_pays_once(tmp_path: Path) -> None:
    clock = VirtualClock()
    api = FakeApi(clock)
    api.order = "oldest"
    api.create(None, at=START - HOUR)  # another client's job, an hour before: listed first
    async with rig_on(tmp_path, api=api) as rig:
        api.fates.append("5xx")  # the gateway's 500: the job was not created
        await rig.submit_all(1)
        assert paid(api, 0) == 1
        assert rig.state(0).job_id is not None
        api.fates.append("lost")  # this time it was created, and the answer lost
        await rig.submitter.submit(spec(1), rig.state(1))
        assert paid(api, 1) == 1
        assert rig.state(1).job_id == api.jobs_for("job 1")[0].job_id  # adopted


async def test_a_server_clock_minutes_ahead_is_read_before_the_first_post(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path, skew=300.0) as rig:
        rig.api.fates.extend(["lost"])  # the run's very first POST loses its answer
        await rig.submit_all(1)
        assert paid(rig.api, 0) == 1
        assert rig.state(0).job_id is not None
        clock_reads = events(rig.api, "clock")
        assert clock_reads
        assert clock_reads[0] < events(rig.api, "post")[0]


async def test_a_server_clock_jump_between_posts_widens_the_window(tmp_path: Path) -> None:
    async with rig_on(tmp_path, concurrency=1) as rig:
        await rig.submit_all(2)
        rig.api.jumps.append((rig.clock.now, 120.0))  # the server's clock leaps forward
        rig.api.fates.append("lost")
        await rig.submitter.submit(spec(2), rig.state(2))
        assert [paid(rig.api, i) for i in range(3)] == [1, 1, 1]
        assert rig.state(2).job_id == rig.api.jobs_for("job 2")[0].job_id  # adopted


async def test_a_cursor_that_repeats_ends_the_search_and_the_job_is_not_resent(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    api = FakeApi(clock)
    api.order, api.page_size, api.loop_after = "oldest", 2, 1
    for minute in range(1, 11):
        api.create(None, at=START - 60.0 * minute)
    async with rig_on(tmp_path, api=api) as rig:
        api.fates.append("5xx")
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Doubted)
        assert paid(api, 0) == 0
        state = rig.state(0)
        assert state.doubt == "the job listing's cursor repeats"
        assert len(events(api, "list")) < 5


async def test_a_listing_without_end_is_read_to_a_cap(tmp_path: Path) -> None:
    clock = VirtualClock()
    api = FakeApi(clock)
    api.order, api.page_size = "shuffled", 1
    for minute in range(1, 2 * MAX_SEARCH_PAGES):
        api.create(None, at=START - 60.0 * minute)
    async with rig_on(tmp_path, api=api) as rig:
        api.fates.append("dropped")
        await rig.submitter.submit(spec(0), rig.state(0))
        assert paid(api, 0) == 0
        assert rig.state(0).doubt is not None
        assert len(events(api, "list")) == MAX_SEARCH_PAGES


async def test_a_server_without_date_headers_proves_nothing(tmp_path: Path) -> None:
    async with rig_on(tmp_path, skew=300.0) as rig:
        rig.api.dates = False
        rig.api.fates.extend(["ok", "dropped"])  # created nothing, but nothing can prove it
        await rig.submit_all(2)
        assert [paid(rig.api, i) for i in range(2)] == [1, 0]
        doubt = rig.state(1).doubt
        assert doubt is not None
        assert "clock was not read" in doubt


async def test_jobs_stamped_after_the_servers_own_time_prove_nothing(tmp_path: Path) -> None:
    """Its Date and its created_at come from two clocks that disagree: the window, read on
    one, says nothing of stamps made on the other."""
    async with rig_on(tmp_path) as rig:
        rig.api.create(None, at=START + HOUR)  # stamped an hour ahead of the server's Date
        rig.api.fates.append("dropped")
        await rig.submit_all(1)
        assert paid(rig.api, 0) == 0
        assert rig.state(0).doubt == "the listing holds jobs stamped after the server's own time"


async def test_a_job_id_answered_for_two_keys_is_accepted_once(tmp_path: Path) -> None:
    async with rig_on(tmp_path, concurrency=1) as rig:
        first = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(first, Sent)
        owned = rig.state(0).job_id
        assert owned is not None
        original = rig.api.submit

        async def same_id(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            remote = await original(*args, **kwargs)  # type: ignore[arg-type]
            return type(remote)(owned, remote.status, remote.created_at, None, (), None)

        rig.api.submit = same_id  # type: ignore[method-assign]
        outcome = await rig.submitter.submit(spec(1), rig.state(1))
        assert isinstance(outcome, Failed)
        assert "another job of this folder" in outcome.reason
        assert rig.state(1).job_id is None


async def test_the_journal_refuses_a_second_post_while_the_first_is_unsettled(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.create(None, at=START + 0.1)  # another client's job beside ours
        rig.api.fates.append("lost")
        await rig.submit_all(1)  # two jobs in the lost POST's window: ambiguous
        assert rig.state(0).doubt is not None
        try:
            await rig.journal.record(Submitting(spec(0).key, 9, rig.clock.now))
        except WouldPayTwice:
            pass
        else:
            raise AssertionError("the journal wrote a second POST of an ambiguous job")
        again = await rig.submitter.submit(spec(0), rig.state(0))  # as a buggy caller would
        assert isinstance(again, Deferred)
        assert paid(rig.api, 0) == 1


# ---- the property --------------------------------------------------------------------------

FATES = ["ok", "ok", "ok", "lost", "garbled", "dropped", "5xx", "unsent", "429", "slow"]
CANCEL_FATES = ["ok", "ok", "late", "lost", "refused"]


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, object]:
    return {
        "order": draw(st.sampled_from(["newest", "oldest", "shuffled"])),
        "odd_cursors": draw(st.booleans()),
        "page_size": draw(st.sampled_from([1, 2, 3, 7, 100])),
        "loop_after": draw(st.none() | st.integers(1, 4)),
        "overlap": draw(st.booleans()),
        "skew": draw(st.floats(-900, 900)),
        "jumps": draw(st.lists(st.tuples(st.floats(0, 20), st.floats(-300, 300)), max_size=2)),
        "foreign": draw(st.lists(st.floats(-HOUR, 30), max_size=12)),
        "fates": draw(st.lists(st.sampled_from(FATES), max_size=14)),
        "dates": draw(st.booleans()),
        "jobs": draw(st.integers(1, 6)),
        "concurrency": draw(st.sampled_from([1, 3])),
        "rtt": draw(st.sampled_from([0.05, 0.3])),
        "exclusive": draw(st.booleans()),
        "job_seconds": draw(st.sampled_from([0.1, 1.0, 5.0, float("inf")])),
        "cancel_fates": draw(st.lists(st.sampled_from(CANCEL_FATES), max_size=8)),
    }


@st.composite
def exclusive_worlds(draw: st.DrawFn) -> dict[str, object]:
    """Worlds where lost answers meet an exclusive account: the server's clock is read, and
    the jobs beside ours (ours too, as the declaration says) sit in the POSTs' windows."""
    world = draw(worlds())
    near = st.lists(st.floats(-0.5, 3.0), max_size=4)
    lossy = st.lists(st.sampled_from(["ok", "lost", "lost", "garbled", "slow"]), max_size=10)
    return world | {
        "exclusive": True,
        "dates": True,
        "foreign": draw(near),
        "fates": draw(lossy),
        "jumps": [],
    }


async def _live_in(world: dict[str, object], folder: Path) -> tuple[FakeApi, dict[int, Submission]]:
    clock = VirtualClock()
    api = FakeApi(clock, rtt=world["rtt"], skew=world["skew"])  # type: ignore[arg-type]
    for name in ("order", "odd_cursors", "page_size", "loop_after", "overlap", "dates"):
        setattr(api, name, world[name])
    api.jumps = [(START + at, by) for at, by in world["jumps"]]  # type: ignore[attr-defined]
    for at in world["foreign"]:  # type: ignore[attr-defined]
        api.create(None, at=START + at)
    api.fates.extend(world["fates"])  # type: ignore[arg-type]
    api.cancel_fates.extend(world["cancel_fates"])  # type: ignore[arg-type]
    api.job_seconds = world["job_seconds"]  # type: ignore[assignment]
    owner = Ownership(exclusive=bool(world["exclusive"]))
    async with virtual_time(clock):
        rig = make_rig(folder, clock, api, concurrency=world["concurrency"], owner=owner)  # type: ignore[arg-type]
        try:
            with anyio.fail_after(5):  # real seconds: a search that never ends fails the test
                outcomes = await rig.submit_all(world["jobs"])  # type: ignore[arg-type]
        finally:
            rig.journal.close()
    return api, outcomes


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(worlds())
def test_no_prompt_is_ever_paid_twice(world: dict[str, object]) -> None:
    _check(world)


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(exclusive_worlds())
def test_no_prompt_is_paid_twice_when_an_exclusive_account_cancels_its_jobs(
    world: dict[str, object],
) -> None:
    _check(world)


def _check(world: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        api, outcomes = anyio.run(_live_in, world, Path(folder))
    for i in range(world["jobs"]):  # type: ignore[call-overload]
        assert paid(api, i) <= 1, f"job {i} was billed {paid(api, i)} times"
        # Progress: the job is followed (its one job at the server), or it ended for a
        # stated reason (ambiguous, failed, left for a later look or the next run).
        outcome = outcomes[i]
        match outcome:
            case Sent(job_id=job_id):
                assert job_id not in api.cancelled, "a job followed is never one cancelled"
            case Doubted(why=why) | Failed(reason=why) | Deferred(reason=why):
                assert why, f"job {i} ended {type(outcome).__name__} without a reason"
            case _:
                raise AssertionError(f"job {i} ended {outcome!r}")
