"""The engine's pure parts: backoff, the adaptive limit, journal replay, job JSON, client errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api.backoff import NETWORK, OVERLOAD, Backoff, jittered
from runner.api.client import KreaClient
from runner.api.limiter import AdaptiveLimit, decreased, increased
from runner.api.remote import JobStatus, MalformedJob, RemoteJob
from runner.emulator import EmulatorConfig, run_emulator
from runner.errors import AmbiguousSubmit, FatalApiError, PermanentApiError, TransientApiError
from runner.state.events import Ambiguous, Done, Lost, Retry, Submitted, Submitting
from runner.state.figures import Counts, ModelFigures
from runner.state.journal import Journal, ReplayStats, read_events, records_at
from runner.state.ledger import CANCELLED_ON_EXIT, RunLedger, fold
from runner.state.records import RecordStatus
from runner.state.run_events import (
    Downloaded,
    LeftOver,
    LostChecked,
    Planned,
    TransientError,
    Unfinished,
)


def test_backoff_grows_then_caps_and_jitters_within_bounds() -> None:
    rng = random.Random(1)
    plain = Backoff(base=1, factor=3, cap=20, jitter=0)
    assert [plain.delay(n, rng=rng) for n in range(5)] == [1, 3, 9, 20, 20]
    spread = [NETWORK.delay(0, rng=rng) for _ in range(200)]
    assert 0.75 <= min(spread) < max(spread) <= 1.25


def test_overload_backoff_follows_the_docs_5_15_45() -> None:
    assert [Backoff(base=5, jitter=0, cap=120).delay(n) for n in range(3)] == [5, 15, 45]
    assert OVERLOAD.delay(0, rng=random.Random(0)) >= 5 * 0.75


def test_retry_after_is_never_undercut() -> None:
    rng = random.Random(2)
    assert all(NETWORK.delay(3, retry_after=7.0, rng=rng) >= 7.0 for _ in range(100))


def test_poll_jitter_spreads_around_the_interval() -> None:
    rng = random.Random(3)
    values = [jittered(2.0, rng=rng) for _ in range(100)]
    assert 1.8 <= min(values) < max(values) <= 2.2


def test_aimd_cuts_by_a_quarter_and_climbs_back_slowly() -> None:
    assert decreased(8) == 6
    assert decreased(1) == 1
    limit = 6.0
    for _ in range(6):
        limit = increased(limit, 8)
    assert 6.9 < limit < 7.1
    assert increased(8, 8) == 8


def test_adaptive_limit_counts_a_burst_once_and_tells_when_room_comes() -> None:
    now = [0.0]
    told: list[int] = []
    gate = AdaptiveLimit(4, cooldown=1.0, clock=lambda: now[0], on_room=lambda: told.append(1))
    gate.overloaded()
    gate.overloaded()  # same burst: counted once
    assert int(gate.limit) == 3
    now[0] = 1.5
    gate.overloaded()
    assert int(gate.limit) == 2
    with gate.held(), gate.held(), gate.held():  # resumed jobs count whatever the cap
        assert gate.room == -1
        assert not told
    assert gate.room == 2
    assert len(told) == 3  # each end may make room for a waiting job
    gate.accepted()
    assert len(told) == 4


def test_journal_replay_folds_events_into_states() -> None:
    events = [
        {"e": "submitting", "k": "a", "a": 1, "t": 10.0},
        {"e": "submitted", "k": "a", "a": 1, "id": "j1", "ts": 10.0, "tr": 10.2, "c": 10.1},
        {"e": "submitting", "k": "b", "a": 1, "t": 11.0},
        {"e": "submitting", "k": "c", "a": 1, "t": 12.0},
        {"e": "lost", "k": "c", "a": 1},
        {"e": "done", "k": "a", "record": {"status": "completed"}},
    ]
    ledger = fold(enumerate(events))
    a, b, c = (ledger.states[k] for k in "abc")
    assert (a.done, a.done_at) == ("completed", 5)
    assert a.job_id is None
    assert (b.pending_since, b.job_id) == (11.0, None)
    assert (c.pending_since, c.attempts) == (None, 1)
    assert ledger.known_ids == {"j1"}
    assert (ledger.skew.low, ledger.skew.high) == pytest.approx((-0.1, 0.1))


async def test_journal_drops_a_torn_tail_and_appends_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"e":"submitting","k":"a","a":1,"t":1}\n{"e":"submi')
    journal = Journal.open(path)
    assert journal.ledger.states["a"].pending_since == 1
    await journal.record(Lost("a", 1))
    assert journal.ledger.states["a"].pending_since is None
    journal.close()
    stats = ReplayStats()
    events = [event for _, event in read_events(path, stats)]
    assert stats.torn == 0
    assert [type(e).__name__ for e in events] == ["Submitting", "Lost"]


async def test_journal_appends_from_many_tasks_all_land(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.jsonl")
    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(journal.record, Lost(f"k{i}"))
    journal.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["k"] for line in lines) == sorted(f"k{i}" for i in range(200))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"job_id": "x", "status": "failed", "result": {"error": "nsfw"}}, "nsfw"),
        ({"job_id": "x", "status": "failed", "error": {"message": "boom"}}, "boom"),
        ({"job_id": "x", "status": "failed", "error": "plain"}, "plain"),
    ],
)
def test_failure_reasons_are_read_wherever_the_api_puts_them(
    data: dict[str, object], reason: str
) -> None:
    assert RemoteJob.from_json(data).error == reason


def test_unknown_fields_are_ignored_and_previews_are_not_results() -> None:
    job = RemoteJob.from_json(
        {
            "job_id": "x",
            "status": "intermediate-complete",
            "surprise": 1,
            "result": {"urls": ["http://a/preview.jpg"]},
        }
    )
    assert job.status == JobStatus.INTERMEDIATE_COMPLETE
    assert job.urls == ()


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"status": "completed"},
        {"job_id": "x", "status": "odd"},
        {"job_id": "x", "status": "completed", "result": {"urls": "u"}},
    ],
)
def test_malformed_jobs_are_refused(data: object) -> None:
    with pytest.raises(MalformedJob):
        RemoteJob.from_json(data)


async def test_client_translates_statuses_into_the_error_hierarchy() -> None:
    body = {"prompt": "x", "width": 256, "height": 256}
    endpoint = "/generate/image/bytedance/seedream-4"
    cases: list[tuple[EmulatorConfig, type[Exception]]] = [
        (EmulatorConfig(token="other"), FatalApiError),
        (EmulatorConfig(credits=1.0), FatalApiError),
        (EmulatorConfig(error_rate=1.0), AmbiguousSubmit),
        (EmulatorConfig(reset_rate=1.0), AmbiguousSubmit),
        (EmulatorConfig(malformed_rate=1.0), AmbiguousSubmit),
        (EmulatorConfig(retired=frozenset({"seedream-4"})), PermanentApiError),
    ]
    for config, expected in cases:
        async with run_emulator(config) as emu, KreaClient(emu.url, "t") as client:
            with pytest.raises(expected):
                await client.submit(endpoint, body)
    async with (
        run_emulator(EmulatorConfig(concurrency_limit=1)) as emu,
        KreaClient(emu.url, "t") as client,
    ):
        await client.submit(endpoint, body)
        with pytest.raises(TransientApiError) as caught:
            await client.submit(endpoint, body)
        assert caught.value.overload
        with pytest.raises(PermanentApiError):
            await client.get_job("no-such-job")


async def test_append_returns_where_each_line_starts(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"e":"lost","k":"x"}\n')
    journal = Journal.open(path)
    offsets: dict[str, int] = {}

    async def done(key: str) -> None:
        offsets[key] = await journal.record(
            Done(key, {"key": key, "status": "completed", "files": []})
        )

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(done, f"k{i}")
    journal.close()
    keys = sorted(offsets)
    assert [r.key for r in records_at(path, (offsets[k] for k in keys))] == keys


def test_journals_written_before_ambiguous_had_a_name_still_replay() -> None:
    events = [
        {"e": "submitting", "k": "a", "a": 1, "t": 10.0},
        {"e": "unresolved", "k": "a", "a": 1, "candidates": ["j1", "j2"]},
    ]
    ledger = fold(enumerate(events))
    assert ledger.states["a"].candidates == ("j1", "j2")
    assert ledger.states["a"].remote
    assert ledger.known_ids == {"j1", "j2"}


def test_every_event_is_written_as_the_journals_before_and_read_back_the_same() -> None:
    from runner.state.events import (
        Ambiguous,
        Asset,
        Released,
        Retry,
        Submitted,
        Submitting,
        decode,
        encode,
    )

    lines = [  # as journals of the previous version wrote them
        {"e": "submitting", "k": "a", "a": 1, "t": 10.0},
        {"e": "submitting", "k": "a", "a": 2, "t": 10.0, "lo": -0.5, "hi": 0.5},
        {"e": "submitted", "k": "a", "a": 1, "id": "j1", "ts": 10.0, "tr": 10.2, "c": 10.1},
        {"e": "submitted", "k": "a", "a": 1, "id": "j1", "ts": 1.0, "tr": 2.0, "c": None}
        | {"adopted": True},
        {"e": "lost", "k": "a", "a": 1},
        {"e": "retry", "k": "a", "a": 1, "id": "j1", "error": "nsfw"},
        {"e": "ambiguous", "k": "a", "a": 1, "candidates": ["j2"], "why": "cursor loops"},
        {"e": "released", "k": "a", "a": 1},
        {"e": "done", "k": "a", "record": {"status": "completed"}},
        {"e": "asset", "k": "f" * 64, "url": "https://x/y.png"},
    ]
    events = [decode(line) for line in lines]
    assert [type(e) for e in events] == [
        Submitting,
        Submitting,
        Submitted,
        Submitted,
        Lost,
        Retry,
        Ambiguous,
        Released,
        Done,
        Asset,
    ]
    assert [encode(e) for e in events if e is not None] == lines
    old = decode({"e": "unresolved", "k": "a", "a": 1, "candidates": ["j1"]})
    assert isinstance(old, Ambiguous)
    assert old.candidates == ("j1",)


def test_the_run_ledger_counts_live_events_and_not_a_replay() -> None:
    """One fold: journal events change states and this run's figures; noted events the figures
    alone; a replayed journal changes states and no figure."""
    done = {"key": "a", "model": "flux", "status": "completed", "cost_usd": 0.25}
    journaled: list[Any] = [
        Submitting("a", 1, 10.0),
        Submitted("a", 1, "j1", 10.0, 10.1, 10.05),
        Retry("a", 1, "j1", "boom"),
        Submitted("b", 1, "j2", adopted=True),
        Retry("b", 1, "j2", CANCELLED_ON_EXIT),
        Ambiguous("c", 1, ("j3",)),
        Done("a", done),
    ]
    replayed = fold(enumerate(journaled))
    assert replayed.counts == Counts()
    assert replayed.states["a"].done == RecordStatus.COMPLETED

    ledger = RunLedger()
    for event in [Planned({"flux": (1, 2)}), *journaled]:
        ledger.apply(event)
    ledger.apply(TransientError(429, overload=True))
    ledger.apply(TransientError(503))
    ledger.apply(Downloaded(1000))
    ledger.apply(Unfinished("b", LeftOver.DEFERRED))
    ledger.apply(LostChecked(resent=2, unchecked=1))
    counts = ledger.counts
    assert (counts.total, counts.skipped, counts.completed) == (2, 1, 1)
    assert counts.by_model == {"flux": ModelFigures(finished=2, jobs=2)}
    assert (counts.submits, counts.adopted, counts.retries, counts.unmatched) == (2, 1, 1, 1)
    assert (counts.transient_errors, counts.overload_429, counts.rate_limited_429) == (2, 1, 0)
    assert (counts.downloads, counts.bytes, counts.deferred) == (1, 1000, 1)
    assert (counts.resent, counts.unchecked) == (2, 1)
    assert counts.spend_usd == 0.25
    assert ledger.states["a"].done == replayed.states["a"].done


def test_a_cancel_read_back_frees_the_key_only_for_its_current_job() -> None:
    """``JobCancelled``: written and read back the same; folded, it frees the key when it
    names the key's current job (counting a straggler), and otherwise only makes the job
    the folder's (never a lost POST's candidate again). A line without its reason is none."""
    from runner.state.events import RECONCILED, STRAGGLER, JobCancelled, decode, encode

    line = {"e": "cancelled", "k": "a", "a": 1, "id": "j1", "why": STRAGGLER}
    event = decode(line)
    assert event == JobCancelled("a", 1, "j1", STRAGGLER)
    assert encode(event) == line
    assert decode({"e": "cancelled", "k": "a", "a": 1, "id": "j1"}) is None
    ledger = RunLedger()
    for each in [
        Submitting("a", 1, 10.0),
        Submitted("a", 1, "j1", 10.0, 10.1, 10.05),
        JobCancelled("a", 1, "j9", RECONCILED),  # another job of ours: the key keeps its own
    ]:
        ledger.apply(each)
    assert ledger.states["a"].job_id == "j1"
    assert "j9" in ledger.known_ids
    ledger.apply(JobCancelled("a", 1, "j1", STRAGGLER))
    state = ledger.states["a"]
    assert (state.job_id, state.settled, state.straggled) == (None, True, 1)
    assert (ledger.counts.stragglers, ledger.counts.reconciled) == (1, 1)
    replayed = fold(enumerate([Submitted("a", 1, "j1"), JobCancelled("a", 1, "j1", STRAGGLER)]))
    assert replayed.states["a"].settled, "a resumed run sends it again, once"
