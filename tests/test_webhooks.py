"""Webhooks: deliveries wake jobs at once; repeats, late, forged ones change nothing."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from runner import run_batch
from runner.api.remote import RemoteJob
from runner.api.webhooks import (
    KEY_PARAM,
    SECRET_PARAM,
    Receiver,
    WebhookSettings,
    receiving,
    with_secret,
)
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.engine.deliveries import Deliveries
from runner.engine.latency import TrackSettings
from runner.engine.retry import SystemClock
from runner.engine.tracker import Tracker
from runner.errors import UsageError
from runner.outputs import OutputFolder
from tests.api_stub import ApiStub
from tests.engine_helpers import FAST, check_folder, read_results, small_manifest
from tests.virtual_time import VirtualClock, virtual_time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def settings() -> WebhookSettings:
    port = free_port()
    return WebhookSettings.parse(f"http://127.0.0.1:{port}/hooks?x=1", f"127.0.0.1:{port}")


async def test_jobs_end_through_webhooks_even_when_deliveries_repeat_or_are_lost(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(
        latency=Latency.parse("uniform:0.1-0.3"), webhook_repeats=2, webhook_drop_rate=0.3, seed=3
    )
    async with run_emulator(config) as emu:
        result = await run_batch(
            small_manifest(30, concurrency=10, webhook_poll_interval=0.5),
            tmp_path,
            api_base=emu.url,
            token="t",
            options=FAST,
            webhook=settings(),
        )
        check_folder(tmp_path, 30, emu.emulator)
        stats = emu.emulator.snapshot()
    assert result.counts.completed == 30
    assert stats["downloads"] == 30, "each job's image is downloaded once"
    assert stats["webhooks_dropped"] > 0
    assert stats["webhooks_sent"] > 30
    webhooks = result.summary["webhooks"]
    assert webhooks["used"] > 0
    assert webhooks["ignored"] > 0, "repeated deliveries are ignored"
    assert webhooks["refused"] == 0
    assert webhooks["used"] + webhooks["ignored"] == stats["webhooks_sent"]
    # Looks are a safety net once a delivery has arrived (until then the first jobs are
    # looked at every 20 ms, as without webhooks, for about 10 lists): without webhooks this
    # run lists about 40 times.
    assert stats.get("lists", 0) + stats.get("polls", 0) < 24


async def test_when_every_delivery_is_lost_the_safety_net_still_finishes_every_job(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(latency=Latency.parse("fixed:0.1"), webhook_drop_rate=1.0)
    async with run_emulator(config) as emu:
        result = await run_batch(
            small_manifest(8, webhook_poll_interval=0.3),
            tmp_path,
            api_base=emu.url,
            token="t",
            options=FAST,
            webhook=settings(),
        )
        check_folder(tmp_path, 8, emu.emulator)
    assert result.counts.completed == 8
    assert result.summary["webhooks"]["used"] == 0


class _NeverAsked(ApiStub):
    """A client the tracker must not need: the delivery is what ends the job."""

    async def get_job(self, job_id: str) -> RemoteJob:
        raise AssertionError("polled although the webhook should have answered")


class AskedAt(ApiStub):
    """A client whose job has ended: records when (virtual time) it was asked."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.asked: list[float] = []

    async def get_job(self, job_id: str) -> RemoteJob:
        self.asked.append(self.clock.monotonic())
        return RemoteJob.from_json(_job(job_id))


def net_tracker(
    client: AskedAt, clock: VirtualClock, folder: Path, hooks: Deliveries | None = None
) -> Tracker:
    """A tracker polling every 2 s, or every 600 s as a webhook's safety net."""
    return Tracker(
        client,
        OutputFolder(folder),
        clock,
        TrackSettings(poll_interval=2, webhook_poll_interval=600),
        note=lambda event: None,
        rng=random.Random(0),
        hooks=hooks,
    )


async def test_a_lost_delivery_is_found_once_the_job_is_slower_than_its_peers(
    tmp_path: Path,
) -> None:
    """The safety net looks first when nine in ten jobs of the model would have ended,
    not a whole webhook_poll_interval after the submit."""
    clock = VirtualClock()
    client = AskedAt(clock)
    tracker = net_tracker(client, clock, tmp_path)
    for seconds in range(1, 11):  # peers took 1 s to 10 s: nine in ten had ended by 10 s
        peer = {**_job("peer"), "completed_at": f"2026-12-01T10:00:{seconds:02d}.000Z"}
        tracker.latency.observe("flux", RemoteJob.from_json(peer))
    async with virtual_time(clock):
        start = clock.monotonic()
        outcome = await tracker.wait("job-1", "flux", clock.time(), webhook=True)
    assert isinstance(outcome, RemoteJob)
    assert len(client.asked) == 1
    assert 10 <= client.asked[0] - start < 11, "looked just after 10 s, not after 600 s"


def _job(job_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "created_at": "2026-12-01T10:00:00.000Z",
        "completed_at": "2026-12-01T10:00:05.000Z",
        "result": {"urls": ["https://cdn.example.com/a.png"]},
    }


async def test_forged_repeated_late_and_unknown_deliveries_change_nothing(tmp_path: Path) -> None:
    tracker = Tracker(
        _NeverAsked(),
        OutputFolder(tmp_path),
        SystemClock(),
        TrackSettings(poll_interval=3600, webhook_poll_interval=3600),
        note=lambda event: None,
        rng=random.Random(0),
    )
    named: list[tuple[str, str | None]] = []

    def deliver(remote: RemoteJob, key: str | None) -> bool:
        named.append((remote.job_id, key))
        return tracker.delivered(remote)

    receiver = Receiver(deliver=deliver)
    hook = settings()
    ended: list[RemoteJob] = []

    async def follow() -> None:
        outcome = await tracker.wait("job-1", webhook=True)
        assert isinstance(outcome, RemoteJob)
        ended.append(outcome)

    async with (
        receiving(hook, receiver) as address,
        aiohttp.ClientSession() as session,
        anyio.create_task_group() as group,
    ):
        url = address.for_key("k1")
        group.start_soon(follow)
        await anyio.wait_all_tasks_blocked()
        forged = with_secret(hook.public_url, "not-the-secret")
        async with session.post(forged, json=_job("job-1")) as response:
            assert response.status == 403
        other_key = url.replace("k1", "k2")  # another key under this key's signature
        async with session.post(other_key, json=_job("job-1")) as response:
            assert response.status == 403
        bare = hook.public_url
        async with session.post(bare, json=_job("job-1")) as response:
            assert response.status == 403
        async with session.post(url, json=_job("job-1", "processing")) as response:
            assert response.status == 200  # not an end: ignored
        async with session.post(url, json={"no": "job"}) as response:
            assert response.status == 400
        await anyio.wait_all_tasks_blocked()
        assert not ended, "nothing but a genuine delivery of the end may end the job"
        assert f"{KEY_PARAM}=k1" in url
        assert SECRET_PARAM not in url, "a job's address holds its key's signature, not the secret"
        assert "x=1" in url
        async with session.post(url, json=_job("job-1")) as response:
            assert response.status == 200
        async with session.post(url, json=_job("job-1")) as response:
            assert response.status == 200  # a repeat
        legacy = with_secret(hook.public_url, receiver.secret)  # an earlier version's address
        async with session.post(legacy, json=_job("job-2")) as response:
            assert response.status == 200  # a job this run does not follow
    assert [job.job_id for job in ended] == ["job-1"]
    assert receiver.counts.to_json() == {"used": 1, "ignored": 3, "refused": 3, "malformed": 1}
    assert named[-3:] == [("job-1", "k1"), ("job-1", "k1"), ("job-2", None)]


def test_webhook_flags_are_checked_before_anything_runs() -> None:
    with pytest.raises(UsageError, match="not an http"):
        WebhookSettings.parse("ftp://example.com/hook", "0.0.0.0:8080")
    with pytest.raises(UsageError, match="HOST:PORT"):
        WebhookSettings.parse("https://example.com/hook", "8080")


async def test_a_resumed_job_is_noticed_without_a_webhook_of_this_run(tmp_path: Path) -> None:
    """Jobs submitted by an earlier run carry its secret, not this one's: they are polled."""
    config = EmulatorConfig(latency=Latency.parse("fixed:0.5"))
    async with run_emulator(config) as emu:
        with anyio.move_on_after(0.3):  # stopped while its jobs run
            await run_batch(small_manifest(4), tmp_path, api_base=emu.url, token="t", options=FAST)
        again = await run_batch(
            small_manifest(4, webhook_poll_interval=600),
            tmp_path,
            api_base=emu.url,
            token="t",
            options=FAST,
            webhook=settings(),
        )
        check_folder(tmp_path, 4, emu.emulator)
    assert again.counts.completed + again.counts.skipped == 4
    assert {r["status"] for r in read_results(tmp_path)} == {"completed"}
    assert json.loads((tmp_path / "summary.json").read_text())["counts"]["unfinished"] == 0
