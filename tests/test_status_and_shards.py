"""`status` reads a folder offline; `--shard` splits a manifest; `merge` puts shards together."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import anyio
import pytest

from runner.batch import run_batch
from runner.cli import main
from runner.cli.status import read_status
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.errors import UsageError
from runner.jobspec import in_shard
from runner.manifest import expand
from runner.sharding import parse_shard
from tests.engine_helpers import FAST, check_folder, manifest_text, read_results, small_manifest
from tests.in_process import in_process


async def test_status_counts_failures_and_what_is_still_running(tmp_path: Path) -> None:
    async with in_process(
        EmulatorConfig(latency=Latency.parse("fixed:0.05"), failure_rate=0.5, seed=4)
    ) as emu:
        await run_batch(
            small_manifest(10, max_attempts=1), tmp_path, **emu.via, token="t", options=FAST
        )
    journal = tmp_path / ".krea-batch" / "journal.jsonl"
    with journal.open("a") as handle:  # a job an interrupted run left running
        handle.write(
            json.dumps(
                {
                    "e": "submitted",
                    "k": "feedfacefeedface",
                    "a": 1,
                    "id": "11111111-2222-4333-8444-555555555555",
                }
            )
            + "\n"
        )
    status = read_status(tmp_path)
    records = read_results(tmp_path)
    failed = [r for r in records if r["status"] == "failed"]
    assert 0 < len(failed) < 10
    assert (status.counts.completed, status.counts.failed) == (10 - len(failed), len(failed))
    assert status.in_flight == {"feedfacefeedface": "11111111-2222-4333-8444-555555555555"}
    assert status.counts.spend_units == pytest.approx((10 - len(failed)) * 17.2)
    assert {k for k, _ in status.failures} == {r["key"] for r in failed}


async def test_status_refresh_asks_the_api_about_jobs_in_flight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:600"))) as emu:
        options = dataclasses.replace(FAST, deadline=None)
        manifest = small_manifest(1, job_timeout=600)
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):  # the run is cut off mid-poll
            await run_batch(manifest, tmp_path, api_base=emu.url, token="t", options=options)
        monkeypatch.setenv("KREA_API_TOKEN", "t")
        code = await anyio.to_thread.run_sync(
            main, ["status", str(tmp_path), "--refresh", "--api-base", emu.url, "--json"]
        )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    [job] = data["in_flight"]
    assert job["remote_status"] in ("queued", "scheduled", "processing")


def test_status_of_a_folder_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is it a krea-batch output folder"):
        read_status(tmp_path)


def test_shards_partition_the_jobs_deterministically() -> None:
    specs = list(expand(small_manifest(200)))
    shards = [[s.key for s in specs if in_shard(s.key, (i, 3))] for i in (1, 2, 3)]
    assert sorted(k for shard in shards for k in shard) == sorted(s.key for s in specs)
    assert all(40 < len(shard) < 95 for shard in shards)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "two"):
        with pytest.raises(UsageError):
            parse_shard(bad)


async def test_two_shards_run_apart_and_merge_into_one_dataset(tmp_path: Path) -> None:
    manifest_file = tmp_path / "jobs.yaml"
    manifest_file.write_text(manifest_text(16))
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        for i in (1, 2):
            await run_batch(
                manifest_file,
                tmp_path / f"shard{i}",
                **emu.via,
                token="t",
                options=dataclasses.replace(FAST, shard=(i, 2)),
            )
        assert emu.emulator.stats["submits"] == 16
        first, second = (read_results(tmp_path / f"shard{i}") for i in (1, 2))
        assert len(first) + len(second) == 16
        assert not {r["key"] for r in first} & {r["key"] for r in second}
        assert (
            main(
                [
                    "merge",
                    str(tmp_path / "shard1"),
                    str(tmp_path / "shard2"),
                    "--out",
                    str(tmp_path / "all"),
                ]
            )
            == 0
        )
        check_folder(tmp_path / "all", 16, emu.emulator)
    rows = (tmp_path / "all" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 16
    assert (tmp_path / "all" / "report.html").is_file()
    merged = json.loads((tmp_path / "all" / "summary.json").read_text())
    run = json.loads((tmp_path / "shard1" / "summary.json").read_text())
    assert merged.keys() == run.keys(), "one summary.json shape for a run and a merge"
    assert merged["counts"].keys() == run["counts"].keys()
    assert merged["counts"]["completed"] == merged["results_records"] == 16
    assert merged["merged_from"] == [str(tmp_path / "shard1"), str(tmp_path / "shard2")]
    assert run["merged_from"] is None
