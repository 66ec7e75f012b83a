"""A pool of API keys: each key an account, each job with the key that submitted it."""

from __future__ import annotations

import json
import logging
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import anyio
import pytest

from runner import run_batch
from runner.api.client import KreaClient
from runner.api.keys import fingerprint
from runner.api.secrets import find_tokens
from runner.cli.main import main
from runner.cli.progress import keys_text
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.engine import Engine, RunResult
from runner.exitcodes import ExitCode
from runner.state.figures import stats_of
from tests.emulator_helpers import emulator_thread
from tests.engine_helpers import FAST, check_folder, manifest_text, read_results, small_manifest

KEYS = ("key-one", "key-two", "key-three", "key-four")


def accounts(emu_stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_label: dict[str, dict[str, Any]] = emu_stats["accounts"]
    return by_label


@pytest.mark.parametrize("poll_mode", ["list", "job"])
async def test_a_pool_spreads_jobs_over_its_keys_and_asks_about_each_with_its_own(
    tmp_path: Path, poll_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Four accounts of 4 jobs at once each: 16 together. Each key holds its own cap of 4, so
    # no account is ever asked for a fifth (which the emulator would refuse with a 429).
    config = EmulatorConfig(latency=Latency.parse("fixed:0.2"), tokens=KEYS, concurrency_limit=4)
    manifest = small_manifest(48, concurrency=4, poll_mode=poll_mode)
    async with run_emulator(config) as emu:
        with caplog.at_level(logging.WARNING):
            result = await run_batch(
                manifest,
                tmp_path,
                api_base=emu.url,
                tokens=[*KEYS, "revoked"],
                options=FAST,
                metrics_file=tmp_path / "metrics.prom",
            )
        check_folder(tmp_path, 48, emu.emulator)
        stats = emu.emulator.snapshot()
    assert result.exit_code == ExitCode.OK
    assert stats.get("wrong_account", 0) == 0
    assert stats["unauthorized"] == 1  # the revoked key is retired at its first refusal
    assert stats.get("refused_429", 0) == 0
    assert stats["duplicate_submits"] == 0
    per_account = accounts(stats)
    assert set(per_account) == {fingerprint(key) for key in KEYS}
    assert all(account["submits"] >= 6 for account in per_account.values())
    # The refused key was named once by its fingerprint, never by its token.
    revoked = fingerprint("revoked")
    assert sum(f"key {revoked} retired" in r.getMessage() for r in caplog.records) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_key = summary["counts"]["by_account"]
    assert by_key[revoked]["retired"]
    assert by_key[revoked]["submits"] == 0
    assert sum(by_key[fingerprint(k)]["completed"] for k in KEYS) == 48
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["keys"][revoked]["retired"]
    assert len(status["keys"]) == 5
    metrics = (tmp_path / "metrics.prom").read_text()
    assert f'krea_batch_key_retired{{key="{revoked}"}} 1' in metrics
    assert f'krea_batch_key_jobs_done{{key="{fingerprint(KEYS[0])}"}}' in metrics
    line = keys_text(stats_of(result.counts, 0.0, 1.0))
    assert line.startswith("keys: ")
    assert f"{revoked} retired (" in line
    assert_no_token_in(tmp_path)


def assert_no_token_in(folder: Path) -> None:
    """No file the run wrote holds a token: keys are named by fingerprint alone."""
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".json", ".html", ".md", ".prom"):
            text = path.read_text()
            assert not any(key in text for key in (*KEYS, "revoked")), path


async def _submit_then_abort(tmp_path: Path, url: str, keys: list[str], jobs: int) -> None:
    """A run that sends every job and stops before any ends: each stays with its key."""

    def abort_once_all_sent(engine: Engine) -> None:
        if engine.counts.submits >= jobs:
            engine.abort()

    result = await run_batch(
        small_manifest(jobs, concurrency=4),
        tmp_path,
        api_base=url,
        tokens=keys,
        options=FAST,
        on_progress=abort_once_all_sent,
    )
    assert result.counts.submits == jobs
    assert result.counts.completed == 0


async def test_a_rerun_follows_each_job_with_the_key_that_holds_it(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:1.5"), tokens=KEYS)
    async with run_emulator(config) as emu:
        await _submit_then_abort(tmp_path, emu.url, list(KEYS[:2]), 8)
        # The keys in another order, and one more: the jobs are each polled with their own.
        again = await run_batch(
            small_manifest(8, concurrency=4),
            tmp_path,
            api_base=emu.url,
            tokens=[KEYS[2], KEYS[1], KEYS[0]],
            options=FAST,
        )
        check_folder(tmp_path, 8, emu.emulator)
        stats = emu.emulator.snapshot()
    assert again.exit_code == ExitCode.OK
    assert again.counts.resumed == 8
    assert again.counts.submits == 0
    assert stats["submits"] == 8
    assert stats.get("wrong_account", 0) == 0


async def test_a_job_whose_key_the_run_lacks_waits_for_a_run_with_it(tmp_path: Path) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:1.5"), tokens=KEYS)
    async with run_emulator(config) as emu:
        await _submit_then_abort(tmp_path, emu.url, list(KEYS[:2]), 8)
        held_by_second = accounts(emu.emulator.snapshot())[fingerprint(KEYS[1])]["submits"]
        assert held_by_second > 0
        without = await run_batch(
            small_manifest(8, concurrency=4),
            tmp_path,
            api_base=emu.url,
            tokens=[KEYS[0]],
            options=FAST,
        )
        assert without.counts.deferred == held_by_second  # never sent again with another key
        assert without.counts.completed == 8 - held_by_second
        assert emu.emulator.stats["submits"] == 8
        assert without.exit_code == ExitCode.FAILED
        with_it = await run_batch(
            small_manifest(8, concurrency=4),
            tmp_path,
            api_base=emu.url,
            tokens=[KEYS[1]],
            options=FAST,
        )
        check_folder(tmp_path, 8, emu.emulator)
        stats = emu.emulator.snapshot()
    assert with_it.exit_code == ExitCode.OK
    assert stats["submits"] == 8
    assert stats.get("wrong_account", 0) == 0


async def test_keys_out_of_credit_retire_one_by_one_and_then_the_run_stops(
    tmp_path: Path,
) -> None:
    # Each account can pay for two jobs (17.2 units each): 4 of the 10 jobs run.
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"), tokens=KEYS[:2], credits=40)
    async with run_emulator(config) as emu:
        result = await run_batch(
            small_manifest(10, concurrency=2),
            tmp_path,
            api_base=emu.url,
            tokens=list(KEYS[:2]),
            options=FAST,
        )
        stats = emu.emulator.snapshot()
    assert stats["submits"] == 4
    assert result.counts.completed == 4
    assert result.fatal
    assert result.exit_code == ExitCode.FATAL
    by_key = result.counts.by_account
    assert all(by_key[fingerprint(k)].retired for k in KEYS[:2])
    assert all("402" in str(by_key[fingerprint(k)].retired) for k in KEYS[:2])


async def test_the_emulator_hides_one_accounts_jobs_from_another() -> None:
    async with (
        run_emulator(EmulatorConfig(tokens=KEYS[:2])) as emu,
        aiohttp.ClientSession() as session,
    ):
        first = {"Authorization": f"Bearer {KEYS[0]}"}
        second = {"Authorization": f"Bearer {KEYS[1]}"}
        url = f"{emu.url}/generate/image/bfl/flux-1-dev"
        async with session.post(
            url, json={"prompt": "a fox", "width": 512, "height": 512}, headers=first
        ) as response:
            job_id = (await response.json())["job_id"]
        async with session.get(f"{emu.url}/jobs/{job_id}", headers=second) as response:
            assert response.status == 404
        async with session.delete(f"{emu.url}/jobs/{job_id}", headers=second) as response:
            assert response.status == 404
        async with session.get(f"{emu.url}/jobs", headers=second) as response:
            assert (await response.json())["items"] == []
        async with session.get(f"{emu.url}/jobs/{job_id}", headers=first) as response:
            assert response.status == 200
        stats = emu.emulator.snapshot()
    assert stats["wrong_account"] == 2
    mine, theirs = accounts(stats)[fingerprint(KEYS[0])], accounts(stats)[fingerprint(KEYS[1])]
    assert mine["submits"] == 1
    assert mine["polls"] == 1
    assert theirs["wrong_account"] == 2
    assert theirs["lists"] == 1


def test_keys_come_from_a_file_one_per_line_or_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KREA_API_TOKEN", raising=False)
    monkeypatch.delenv("KREA_API_TOKENS", raising=False)
    assert find_tokens(None) == []
    monkeypatch.setenv("KREA_API_TOKEN", "solo")
    assert find_tokens(None) == ["solo"]
    monkeypatch.setenv("KREA_API_TOKENS", " a, b ,,c ")
    assert find_tokens(None) == ["a", "b", "c"]
    keys = tmp_path / "keys"
    keys.write_text("# the team's keys\nfirst\n\n  second  \nfirst\n")
    keys.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert find_tokens(str(keys)) == ["first", "second"]
    assert "more than once" in caplog.text
    assert "first" not in caplog.text.replace(str(keys), "")


async def test_status_refresh_asks_about_each_job_with_the_key_that_holds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:30"), tokens=KEYS)
    keys = tmp_path / "keys"
    keys.write_text("\n".join(KEYS[:2]) + "\n")
    keys.chmod(0o600)
    out = tmp_path / "out"
    async with run_emulator(config) as emu:
        await _submit_then_abort(out, emu.url, list(KEYS[:2]), 8)
        command = ["status", str(out), "--refresh", "--json", "--token-file", str(keys)]
        code = await anyio.to_thread.run_sync(main, [*command, "--api-base", emu.url])
        stats = emu.emulator.snapshot()
    assert code == 0
    in_flight = json.loads(capsys.readouterr().out)["in_flight"]
    assert len(in_flight) == 8
    assert {job["remote_status"] for job in in_flight} <= {"queued", "scheduled", "processing"}
    assert stats.get("wrong_account", 0) == 0


# ---- a key's health (#28) ---------------------------------------------------------------------

SICK_KEY_OPTIONS = replace(FAST, key_patience=0.2, key_cooldown=60.0)


async def _two_keys(url: str, out: Path) -> RunResult:
    """Six jobs on keys 1 and 2 of keys.txt, with a sick key's short patience."""
    return await run_batch(
        small_manifest(6, concurrency=4),
        out,
        api_base=url,
        tokens=KEYS[:2],
        key_source="keys.txt",
        options=SICK_KEY_OPTIONS,
    )


async def test_a_key_refused_without_end_hands_its_jobs_to_the_others_and_cools_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Key 1 answers every request with a 429 (proof that nothing was created): after its
    # patience its jobs go to key 2, and it takes none while it cools down.
    sick, well = fingerprint(KEYS[0]), fingerprint(KEYS[1])
    config = EmulatorConfig(
        latency=Latency.parse("fixed:0.05"),
        tokens=KEYS[:2],
        key_faults=frozenset({(sick, "throttled")}),
    )
    async with run_emulator(config) as emu:
        with caplog.at_level(logging.WARNING), anyio.fail_after(10):
            result = await _two_keys(emu.url, tmp_path)
        check_folder(tmp_path, 6, emu.emulator)
        stats = emu.emulator.snapshot()
    assert result.exit_code == ExitCode.OK
    assert result.counts.completed == 6
    per_account = accounts(stats)
    assert per_account[well]["submits"] == 6
    assert per_account[sick].get("submits", 0) == 0
    assert per_account[sick]["rate_limited"] < 60, "the sick key was asked without end"
    cooled = [r.getMessage() for r in caplog.records if "tried again in" in r.getMessage()]
    assert len(cooled) == 1
    assert cooled[0].startswith(f"key 1 of keys.txt ({sick}): ")
    assert result.counts.by_account[sick].cooling is not None


async def test_a_key_whose_listing_fails_holds_only_its_unchecked_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Key 1 loses every submit's answer and cannot list: the one job it created cannot be
    # checked, so it stays with key 1 (never sent again); every other job goes to key 2.
    sick, well = fingerprint(KEYS[0]), fingerprint(KEYS[1])
    faults = frozenset({(sick, "listing-down"), (sick, "lost-answers")})
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"), tokens=KEYS[:2], key_faults=faults)
    async with run_emulator(config) as emu:
        with caplog.at_level(logging.WARNING), anyio.fail_after(10):
            result = await _two_keys(emu.url, tmp_path)
        again = await _two_keys(emu.url, tmp_path)
        per_account = accounts(emu.emulator.snapshot())
        assert emu.emulator.paid_twice() == []
    assert per_account[sick]["submits"] == 1
    assert per_account[well]["submits"] == 5
    assert (result.counts.completed, result.counts.deferred) == (5, 1)
    assert result.exit_code == ExitCode.FAILED
    held = [r.getMessage() for r in caplog.records if "could not settle" in r.getMessage()]
    assert held
    assert held[0].startswith(f"key 1 of keys.txt ({sick}) holds 1 job(s)")
    # The next run asks key 1 again, and still sends the job with no other key.
    assert (again.counts.submits, again.counts.deferred) == (0, 1)


# ---- an API without a listing (#28) ---------------------------------------------------------


async def test_a_lost_submit_on_an_api_without_a_listing_is_ambiguous_and_can_be_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = EmulatorConfig(
        latency=Latency.parse("fixed:0.05"), listing=False, reset_after_create=1.0
    )
    async with run_emulator(config) as emu:
        first = await run_batch(
            small_manifest(2), tmp_path, api_base=emu.url, token="t", options=FAST
        )
        records = read_results(tmp_path)
        rerun = await run_batch(
            small_manifest(2), tmp_path, api_base=emu.url, token="t", options=FAST
        )
        assert emu.emulator.stats["submits"] == 2  # nothing sent again on its own
        emu.emulator.config = replace(config, reset_after_create=0.0)
        with caplog.at_level(logging.WARNING):
            released = await run_batch(
                small_manifest(2),
                tmp_path,
                api_base=emu.url,
                token="t",
                options=replace(FAST, retry_ambiguous=True),
            )
    assert first.counts.ambiguous_jobs == 2
    assert first.counts.deferred == 0
    assert {r["status"] for r in records} == {"ambiguous"}
    assert all("no job listing" in r["error"] for r in records)
    assert (rerun.counts.submits, rerun.counts.ambiguous_before) == (0, 2)
    assert "sending them again pays for at most 2 image(s) twice" in caplog.text
    assert released.counts.completed == 2
    assert released.exit_code == ExitCode.OK


# ---- keys named the way a person finds them (#28) -----------------------------------------


def test_every_key_refused_is_said_once_per_key_with_advice_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# none of these is accepted\nbad-one\nbad-two\nbad-three\n")
    keys.chmod(0o600)
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(6))

    with emulator_thread(EmulatorConfig(tokens=("good",))) as emu:
        url = emu.url
        command = ["run", str(manifest), "--out", str(tmp_path / "out")]
        code = main([*command, "--token-file", str(keys), "--api-base", url])
    err = capsys.readouterr().err
    assert code == ExitCode.FATAL
    for n, token in enumerate(("bad-one", "bad-two", "bad-three"), 1):
        named = f"key {n} of {keys} ({fingerprint(token)}) retired: "
        assert err.count(named) == 1, err
    assert err.count("401") == 3, err  # once per key, nowhere else
    assert "waiting up to" not in err  # no job was in flight
    assert "run the same command again" not in err
    assert f"check the keys in {keys}" in err


# ---- a pool of 10,000 keys (#28) ------------------------------------------------------------


async def _measured(url: str, tokens: list[str], folder: Path) -> tuple[int, int]:
    """A run of 6 jobs: the API clients it opened (a key's start-up cost: session, limiter,
    tracker) and its peak of memory. Counted, not timed: wall time on a shared machine is
    no test."""
    opened = 0
    init = KreaClient.__init__

    def counting(self: KreaClient, *args: Any, **kwargs: Any) -> None:
        nonlocal opened
        opened += 1
        init(self, *args, **kwargs)

    tracemalloc.start()
    try:
        with mock.patch.object(KreaClient, "__init__", counting):
            result = await run_batch(
                small_manifest(6), folder, api_base=url, tokens=tokens, options=FAST
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.counts.completed == 6
    return opened, peak


async def test_ten_thousand_keys_cost_what_the_keys_in_use_cost(tmp_path: Path) -> None:
    many = [f"pool-key-{i:05d}" for i in range(10_000)]
    config = EmulatorConfig(latency=Latency.parse("fixed:0.02"))
    async with run_emulator(config) as emu:
        await _measured(emu.url, ["warm"], tmp_path / "warm")  # imports, caches
        one = [await _measured(emu.url, ["solo"], tmp_path / f"one{i}") for i in (1, 2)]
        pool = [await _measured(emu.url, many, tmp_path / f"pool{i}") for i in (1, 2)]
        stats = emu.emulator.snapshot()
    assert stats["submits"] == 6 * 5
    one_peak = min(p for _, p in one)
    pool_peak = min(p for _, p in pool)
    assert pool_peak <= 2 * one_peak, (pool_peak, one_peak)
    assert [opened for opened, _ in one] == [1, 1]
    assert all(opened <= 6 for opened, _ in pool), "keys opened past the jobs' need"


async def test_status_shows_jobs_spend_and_state_per_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"), tokens=KEYS[:2])
    async with run_emulator(config) as emu:
        result = await run_batch(
            small_manifest(8, concurrency=4),
            tmp_path,
            api_base=emu.url,
            tokens=[*KEYS[:2], "revoked"],
            key_source="keys.txt",
            options=FAST,
        )
    assert result.counts.completed == 8
    assert await anyio.to_thread.run_sync(main, ["status", str(tmp_path), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)["keys"]
    first, second, revoked = (fingerprint(k) for k in (*KEYS[:2], "revoked"))
    assert keys[first]["completed"] + keys[second]["completed"] == 8
    assert keys[first]["completed"] > 0
    assert keys[first]["spend_usd"] + keys[first]["spend_units"] > 0
    assert keys[first]["place"] == "key 1 of keys.txt"
    assert keys[first]["state"] == "ok"
    assert keys[revoked]["place"] == "key 3 of keys.txt"
    assert keys[revoked]["state"].startswith("retired: ")
    assert keys[revoked]["completed"] == 0
    assert await anyio.to_thread.run_sync(main, ["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"  key 3 of keys.txt ({revoked}): no jobs, $0; retired: " in text
    assert f"  key 1 of keys.txt ({first}): {keys[first]['completed']} completed, " in text
