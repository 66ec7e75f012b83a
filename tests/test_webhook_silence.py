"""Webhooks that never come, or stop coming: the run says so once and polls as a run without
webhooks would, so a wrong --webhook-url costs no time. In-process, on virtual time."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import run_batch
from runner.api.remote import RemoteJob
from runner.api.webhooks import WebhookSettings
from runner.emulator import EmulatorConfig, Latency
from runner.engine.candidates import DELIVERY_GRACE
from runner.engine.deliveries import Deliveries
from runner.engine.silence import GRACE, MISSES, Silence
from runner.manifest import expand
from tests.engine_helpers import (
    FAST,
    check_folder,
    read_results,
    small_manifest,
    write_ambiguous_journal,
)
from tests.in_process import in_process
from tests.test_webhooks import AskedAt, net_tracker
from tests.virtual_time import VirtualClock, virtual_time

HOOKS = WebhookSettings("https://hooks.example.com/krea", "127.0.0.1", 9)
JOBS = 40
ADVICE = "check --webhook-url (it must reach --webhook-listen from Krea's servers)"


async def _run(
    out: Path,
    *,
    webhooks: bool,
    drop: float = 1.0,
    taken: int | None = None,
    latency: str = "uniform:1-2",
    **run: Any,
) -> Any:
    """A run of JOBS jobs taking ``latency``, polled every 2 s (with webhooks, a look every
    30 s as a safety net); ``drop`` of the deliveries lost, or all but the first ``taken``.
    Gives the run's result, its virtual seconds and the emulator's figures."""
    config = EmulatorConfig(latency=Latency.parse(latency), webhook_drop_rate=drop, seed=2)
    async with in_process(config, rtt=0.1) as emu:
        listen = emu.listen
        if taken is not None:
            listen = _taking(emu.listen, taken)
        start = emu.clock.monotonic()
        result = await run_batch(
            small_manifest(JOBS, concurrency=8, poll_interval=2, webhook_poll_interval=30, **run),
            out,
            **{**emu.run_args(), "listen": listen},
            options=FAST,
            webhook=HOOKS if webhooks else None,
        )
        seconds = emu.clock.monotonic() - start
        check_folder(out, JOBS, emu.emulator)
        return result, seconds, emu.emulator.snapshot()


def _taking(listen: Any, taken: int) -> Any:
    """``listen`` whose receiver hears the first ``taken`` deliveries only (then none)."""

    def wrapped(settings: WebhookSettings, receiver: Any) -> Any:
        deliver = receiver.deliver
        heard = 0

        def first(remote: RemoteJob, key: str | None) -> bool:
            nonlocal heard
            heard += 1
            return bool(deliver(remote, key)) if heard <= taken else False

        receiver.deliver = first
        return listen(settings, receiver)

    return wrapped


def _looks(stats: dict[str, Any]) -> int:
    return int(stats.get("lists", 0) + stats.get("polls", 0))


async def test_a_run_whose_deliveries_never_come_is_as_quick_as_a_polling_run(
    tmp_path: Path,
) -> None:
    polled, polling_took, polling_stats = await _run(tmp_path / "polls", webhooks=False)
    silent, took, stats = await _run(tmp_path / "silent", webhooks=True)
    assert polled.counts.completed == silent.counts.completed == JOBS
    assert silent.summary["webhooks"]["used"] == 0
    assert stats["paid"] == JOBS
    # Waiting for the safety net's looks, the first jobs alone took 30 s.
    assert took <= polling_took + 3, (took, polling_took)
    assert _looks(stats) <= _looks(polling_stats) + 5, (stats, polling_stats)


async def test_deliveries_that_stop_coming_are_said_to_and_jobs_are_polled_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each job polled on its own: the safety net looks when nine in ten of the model's jobs
    have ended (about 11 s into a 3-12 s job), then every 30 s."""
    with caplog.at_level(logging.INFO, logger="runner"):
        result, _, _ = await _run(
            tmp_path, webhooks=True, drop=0.0, taken=12, latency="uniform:3-12", poll_mode="job"
        )
    assert result.counts.completed == JOBS
    said = [r.getMessage() for r in caplog.records if "no webhook delivery" in r.getMessage()]
    assert len(said) == 1, said
    assert "for the last" in said[0]
    assert "(12 arrived before)" in said[0]
    # Seconds from a job's end to the run noticing it: about 1 when polled every 2 s, near 3
    # when the jobs after the twelfth waited for the safety net.
    lags = [_seconds(r, "noticed_at") - _seconds(r, "completed_at") for r in read_results(tmp_path)]
    assert sum(lags) / len(lags) < 2.2, sorted(lags)


def _seconds(record: dict[str, Any], name: str) -> float:
    return datetime.fromisoformat(record["timings"][name]).timestamp()


async def test_silent_webhooks_are_reported_once_with_advice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="runner"):
        await _run(tmp_path / "silent", webhooks=True)
    said = [r for r in caplog.records if "no webhook delivery" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.WARNING
    text = said[0].getMessage()
    assert text.startswith("no webhook delivery has arrived for ")
    assert ADVICE in text
    assert text.endswith("polling every 2 s meanwhile")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="runner"):
        working, _, _ = await _run(tmp_path / "working", webhooks=True, drop=0.0)
    assert working.summary["webhooks"]["used"] == JOBS
    assert not [r for r in caplog.records if "no webhook delivery" in r.getMessage()]


def test_a_silence_is_confirmed_by_jobs_in_a_row_over_some_seconds_and_said_once() -> None:
    silence = Silence()
    assert not silence.trusted, "deliveries are not relied on before one arrives"
    for n in range(MISSES - 1):
        assert silence.miss(float(n), 2.0) is None
    assert silence.miss(GRACE - 0.1, 2.0) is None, "their deliveries may still be on the way"
    said = silence.miss(GRACE, 2.0)
    assert said is not None
    assert said.warning
    assert said.text.startswith(f"no webhook delivery has arrived for {MISSES + 1} jobs")
    assert silence.miss(GRACE + 10, 2.0) is None, "said once for a silence"
    assert silence.arrived()
    assert silence.trusted
    assert silence.miss(100.0, 2.0) is None, "one delivery lost is no silence"
    assert silence.arrived() is False, "already trusted"
    for n in range(MISSES):
        said = silence.miss(200.0 + GRACE * n, 2.0)
    assert said is not None
    assert not said.warning, "warned once a run; then for the record"
    assert "for the last 3 jobs that ended (2 arrived before)" in said.text
    assert not silence.trusted


async def test_a_job_awaiting_its_delivery_is_polled_soon_once_deliveries_stop(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    client = AskedAt(clock)
    deliveries = Deliveries()
    tracker = net_tracker(client, clock, tmp_path, deliveries)
    deliveries.trackers.append(tracker)
    async with virtual_time(clock):
        other = {"job_id": "other", "status": "completed", "result": {"urls": ["https://a/b"]}}
        deliveries.deliver(RemoteJob.from_json(other), "k0")  # deliveries arrive: a safety net
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: tracker.wait("job-1", webhook=True))
            for _ in range(MISSES):  # other jobs are seen ended by looks, without deliveries
                await clock.sleep(GRACE / 2)
                deliveries.missed(clock.monotonic(), 2)
            confirmed = clock.monotonic()
    assert len(client.asked) == 1
    assert client.asked[0] - confirmed <= 3, "looked at within the poll interval, not 600 s"


async def test_an_ambiguous_jobs_candidates_stop_waiting_for_deliveries_known_not_to_come(
    tmp_path: Path,
) -> None:
    """Deliveries could name which candidate is whose; once they are known not to come
    (about 6 s in, here), the ambiguous job no longer waits its 15 s for them."""
    manifest = small_manifest(JOBS, concurrency=8, poll_interval=2, webhook_poll_interval=30)
    spec = next(iter(expand(manifest)))
    config = EmulatorConfig(latency=Latency.parse("uniform:1-2"), webhook_drop_rate=1.0, seed=2)
    async with in_process(config, rtt=0.1) as emu:
        model = emu.emulator.catalog.resolve(spec.model)
        ids = [emu.emulator.store.create(model, {**spec.body, "seed": s}, None).id for s in (1, 2)]
        write_ambiguous_journal(tmp_path, spec.key, ids)
        start = emu.clock.monotonic()
        result = await run_batch(manifest, tmp_path, **emu.run_args(), options=FAST, webhook=HOOKS)
        took = emu.clock.monotonic() - start
    assert result.counts.ambiguous_jobs == 1
    assert result.counts.completed == JOBS - 1
    assert took < DELIVERY_GRACE, f"{took:.1f} s: the candidates waited for deliveries"
