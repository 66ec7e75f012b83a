"""Exclusive accounts and sibling shards: a lost answer's unclaimed jobs, once proven ours,
are cancelled and read back before the lost job is sent again, once; a key not declared
exclusive never cancels a job it cannot prove is its own. On virtual time, against FakeApi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.engine.lost_round import Ownership
from runner.engine.matching import Candidate, LostPost, reconcile
from runner.engine.outcome import Doubted, Sent
from runner.engine.siblings import Siblings
from runner.state.events import RECONCILED, JobCancelled, Lost, Submitted
from runner.state.journal import read_events
from tests.fake_api import FakeApi
from tests.test_matching import MEASURED
from tests.test_submitter import events, rig_on, spec
from tests.virtual_time import START, VirtualClock

EXCLUSIVE = Ownership(exclusive=True)


def billed(api: FakeApi, i: int) -> int:
    return len(api.billed_for(f"job {i}"))


async def test_a_key_not_declared_exclusive_never_cancels_a_job_it_cannot_prove_its_own(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path) as rig:
        rig.api.create(None, at=START + 0.1)  # someone's job beside ours
        rig.api.fates.append("lost")
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Doubted)
        assert not events(rig.api, "cancel"), "a job that may be someone else's was cancelled"
        assert rig.state(0).doubt is not None


async def test_on_an_exclusive_account_the_windows_jobs_are_cancelled_then_the_job_is_sent_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        rig.api.create(None, at=START + 0.1)  # ours too: nobody else submits with this key
        rig.api.fates.append("lost")
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Sent)
        assert billed(rig.api, 0) == 1, "paid once: its first job was cancelled unbilled"
        assert len(rig.api.jobs_for("job 0")) == 2
        assert len(rig.api.cancelled) == 2
        assert rig.counts.reconciled == 2
        await rig.journal.flush()
        lines = [e for _, e in read_events(rig.journal.path)]
        kinds = [type(e) for e in lines]
        first_cancel = kinds.index(JobCancelled)
        assert kinds.index(Lost) > first_cancel, "the cancels are journaled before the resend"
        assert all(e.why == RECONCILED for e in lines if isinstance(e, JobCancelled))
        resent = [e for e in lines if isinstance(e, Submitted)]
        assert [e.job_id for e in resent] == [rig.state(0).job_id]
        assert rig.state(0).job_id not in rig.api.cancelled
    said = caplog.text
    assert "no job its lost submit may have made was billed" in said
    assert "created no job" not in said, "its POST did create a job: it was cancelled"


async def test_a_candidate_that_completes_as_its_cancel_travels_is_adopted_not_paid_twice(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        rig.api.create(None, at=START + 0.1)
        rig.api.fates.append("lost")
        rig.api.cancel_fates.extend(["late", "late"])  # both end before their DELETEs land
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        # Two completed jobs for one lost POST: which is ours cannot be told, so nothing is
        # sent again and the job ends ambiguous, its candidates collected as paid.
        assert isinstance(outcome, Doubted)
        assert billed(rig.api, 0) == 1
        assert not rig.api.cancelled


async def test_two_lost_posts_on_the_wire_together_are_both_sent_again_once_cancelled(
    tmp_path: Path,
) -> None:
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        rig.api.fates.extend(["ok", "lost", "lost"])  # the first opens the window to 4
        outcomes = await rig.submit_all(3)
        assert all(isinstance(outcome, Sent) for outcome in outcomes.values())
        assert [billed(rig.api, i) for i in range(3)] == [1, 1, 1]
        assert len(rig.api.cancelled) == 2


async def test_when_one_of_two_wins_its_race_to_complete_neither_post_is_sent_again(
    tmp_path: Path,
) -> None:
    """Two POSTs on the wire together, one job completed before its DELETE landed, the
    other cancelled: the completed one is either POST's, so neither is sent again (that could
    pay twice); both end ambiguous, the paid job their candidate."""
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        rig.api.fates.extend(["ok", "lost", "lost"])
        rig.api.cancel_fates.extend(["late", "ok"])
        outcomes = await rig.submit_all(3)
        assert [type(outcomes[i]) for i in (1, 2)] == [Doubted, Doubted]
        assert [billed(rig.api, i) for i in range(3)] in ([1, 1, 0], [1, 0, 1])
        [paid] = [j.job_id for j in rig.api.jobs if j.job_id not in rig.api.cancelled][1:]
        assert rig.state(1).candidates == rig.state(2).candidates == (paid,)


async def test_a_cancel_that_does_not_take_leaves_the_job_ambiguous(tmp_path: Path) -> None:
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        rig.api.create(None, at=START + 0.1)
        rig.api.fates.append("lost")
        rig.api.cancel_fates.extend(["refused", "refused"])
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Doubted)
        assert billed(rig.api, 0) == 1


async def test_a_cancel_that_fails_on_the_way_is_sent_again_and_the_job_goes_once(
    tmp_path: Path,
) -> None:
    """A 502 to a DELETE says nothing of the job: the DELETE is sent again, not given up
    on (which left the lost POST ambiguous over a job still running)."""
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        rig.api.create(None, at=START + 0.1)
        rig.api.fates.append("lost")
        rig.api.cancel_fates.extend(["error", "error", "ok", "error"])
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Sent)
        assert billed(rig.api, 0) == 1
        assert len(rig.api.cancelled) == 2


async def test_the_candidates_are_cancelled_together_not_one_after_another(
    tmp_path: Path,
) -> None:
    """Each second spent cancelling one candidate is a second in which another completes and
    bills: all the DELETEs of a round are on the wire at once."""
    async with rig_on(tmp_path, owner=EXCLUSIVE) as rig:
        for n in range(4):
            rig.api.create(None, at=START + 0.1 + n / 100)
        rig.api.fates.append("lost")
        await rig.submitter.submit(spec(0), rig.state(0))
        sent = [at for at, kind, _ in rig.api.log if kind.startswith("cancel:")]
        assert len(sent) == 5
        assert max(sent) - min(sent) < rig.api.rtt, "the DELETEs went one after another"


def test_reconcile_sends_again_what_was_cancelled_and_adopts_a_completed_job_told_apart() -> None:
    a, b = LostPost("a", 10.0, 10.2), LostPost("b", 10.1, 10.3)
    cancelled = [Candidate("x", 10.15, "cancelled"), Candidate("y", 10.18, "failed")]
    found = reconcile([a, b], cancelled, MEASURED)
    assert sorted(found.resend) == ["a", "b"]
    alone = reconcile([LostPost("a", 10.0, 10.2)], [Candidate("x", 10.1, "completed")], MEASURED)
    assert alone.adopted["a"].job_id == "x"
    both = reconcile([a, b], [Candidate("x", 10.15, "completed")], MEASURED)
    assert set(both.ambiguous) == {"a", "b"}, "one paid job, two POSTs that could own it"
    running = reconcile([a], [Candidate("x", 10.1, "processing")], MEASURED)
    assert running.ambiguous == {"a": ("x",)}
    surely = LostPost("a", 10.0, 10.2, created=True)
    assert reconcile([surely], [], MEASURED).unseen == ["a"], "its job is not listed yet"


def test_a_lost_post_with_no_completed_job_in_its_window_is_sent_again() -> None:
    """Three POSTs joined by a cancelled job: the completed one could be a's or b's, never
    c's, so c's job was not billed, whichever it was: c goes again, a and b stay ambiguous."""
    a, b, c = LostPost("a", 10.0, 10.2), LostPost("b", 10.1, 10.3), LostPost("c", 10.25, 10.5)
    jobs = [Candidate("x", 10.15, "completed"), Candidate("y", 10.28, "cancelled")]
    found = reconcile([a, b, c], jobs, MEASURED)
    assert found.resend == ["c"]
    assert found.ambiguous == {"a": ("x",), "b": ("x",)}


def _sibling(folder: Path, jobs: list[str], pending: bool = False) -> None:
    state = folder / ".krea-batch"
    state.mkdir(parents=True)
    identity = {"format": "files", "api": "emulator", "manifests": [], "shard": [2, 2]}
    (folder / "krea-batch.json").write_text(json.dumps(identity))
    lines = [{"e": "submitted", "k": f"s{n}", "a": 1, "id": job} for n, job in enumerate(jobs)]
    if pending:
        lines.append({"e": "submitting", "k": "late", "a": 1, "t": START})
    (state / "journal.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


async def test_a_sibling_shards_job_is_never_a_candidate(tmp_path: Path) -> None:
    api = FakeApi(VirtualClock())
    theirs = api.create(None, at=START + 0.1)
    _sibling(tmp_path / "shard-2", [theirs.job_id])
    (tmp_path / "shard-1").mkdir()
    siblings = Siblings(str(tmp_path / "shard-*"), tmp_path / "shard-1", (1, 2))
    async with rig_on(tmp_path / "shard-1", api=api, owner=Ownership(siblings=siblings)) as rig:
        api.fates.append("lost")
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Sent), "its own job, alone once the sibling's is set aside"
        assert rig.state(0).job_id == api.jobs_for("job 0")[0].job_id


async def test_while_a_sibling_has_a_post_unanswered_an_exclusive_key_cancels_nothing(
    tmp_path: Path,
) -> None:
    api = FakeApi(VirtualClock())
    api.create(None, at=START + 0.1)  # perhaps the sibling's unanswered POST's job
    _sibling(tmp_path / "shard-2", [], pending=True)
    (tmp_path / "shard-1").mkdir()
    siblings = Siblings(str(tmp_path / "shard-*"), tmp_path / "shard-1", (1, 2))
    owner = Ownership(exclusive=True, siblings=siblings)
    async with rig_on(tmp_path / "shard-1", api=api, owner=owner) as rig:
        api.fates.append("lost")
        outcome = await rig.submitter.submit(spec(0), rig.state(0))
        assert isinstance(outcome, Doubted)
        assert not api.cancelled


def test_a_key_file_declares_keys_exclusive_one_by_one_and_nothing_else(tmp_path: Path) -> None:
    import pytest

    from runner.api.keys import fingerprint
    from runner.api.secrets import read_keys_file
    from runner.errors import UsageError

    keys = tmp_path / "keys"
    keys.write_text("# ours alone, then a shared one\nkey-one exclusive\nkey-two\n")
    assert read_keys_file(str(keys)) == (["key-one", "key-two"], {fingerprint("key-one")})
    keys.write_text("key-one\nsecret-two shared\n")
    with pytest.raises(UsageError) as raised:
        read_keys_file(str(keys))
    assert "key 2 is followed by something other than 'exclusive'" in str(raised.value)
    assert "secret" not in str(raised.value)


def test_exclusive_account_and_siblings_flags_become_the_engines_options() -> None:
    from runner.cli.main import _options
    from runner.cli.parser import build_parser
    from runner.engine.options import ALL_KEYS

    parser = build_parser()
    args = parser.parse_args(["run", "jobs.yaml", "--exclusive-account", "--siblings", "o/s-*"])
    options = _options(args, frozenset())
    assert (options.exclusive, options.siblings) == (frozenset({ALL_KEYS}), "o/s-*")
    plain = _options(parser.parse_args(["run", "jobs.yaml"]), frozenset({"35a34ba4"}))
    assert (plain.exclusive, plain.siblings) == (frozenset({"35a34ba4"}), None)


async def test_a_run_on_an_exclusive_account_ends_nothing_ambiguous_and_pays_each_job_once(
    tmp_path: Path,
) -> None:
    """Answers lost after the job was made, among POSTs on the wire together behind a round
    trip: without the declaration some jobs end ambiguous and nothing is cancelled; with it,
    none, and every job is paid once."""
    import dataclasses

    from runner import run_batch
    from runner.emulator import EmulatorConfig, Latency
    from runner.engine.options import ALL_KEYS
    from tests.engine_helpers import FAST, check_folder, small_manifest
    from tests.in_process import in_process

    config = EmulatorConfig(latency=Latency.parse("uniform:3-5"), reset_after_create=0.1, seed=5)
    manifest = small_manifest(60, concurrency=16, poll_interval=0.5)
    ambiguous = {}
    for exclusive in (False, True):
        options = dataclasses.replace(FAST, exclusive=frozenset({ALL_KEYS} if exclusive else ()))
        out = tmp_path / f"exclusive-{exclusive}"
        async with in_process(config, rtt=0.15) as emu:
            result = await run_batch(manifest, out, **emu.run_args(), options=options)
            check_folder(out, 60, emu.emulator)
            stats = emu.emulator.snapshot()
        ambiguous[exclusive] = result.counts.ambiguous_jobs
        if exclusive:
            assert result.counts.ambiguous_jobs == 0
            assert stats["paid"] == 60 == result.counts.completed
            assert result.counts.reconciled == stats.get("cancels", 0) > 0
        else:
            assert stats.get("cancels", 0) == 0, "a key not declared exclusive cancels nothing"
    assert ambiguous[False] > 0, "no job was ambiguous without the declaration: proves nothing"
