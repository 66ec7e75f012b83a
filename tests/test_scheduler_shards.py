"""Shards started by a scheduler: ``--shard auto`` as a Slurm array, a Kubernetes Indexed Job
or an AWS Batch array sees it, and four shards sharing one account, merged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import pytest

from runner.cli import main
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.errors import UsageError
from runner.jobspec import in_shard
from runner.manifest import expand, load_manifest
from runner.sharding import parse_shard
from tests.emulator_helpers import emulator_thread
from tests.engine_helpers import cli_process, manifest_text


def _slurm(task: int, first: int, last: int, **more: str) -> dict[str, str]:
    """What Slurm sets in a task of ``--array=FIRST-LAST``."""
    return {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(first),
        "SLURM_ARRAY_TASK_MAX": str(last),
        "SLURM_ARRAY_TASK_STEP": "1",
        "SLURM_ARRAY_TASK_COUNT": str(last - first + 1),
        **more,
    }


RERUN_OF_TASK_5 = _slurm(5, 5, 5)  # `sbatch --array=5`: SLURM_ARRAY_TASK_COUNT=1


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        ("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, (1, 4)),
        ("auto", _slurm(3, 0, 3), (4, 4)),
        ("auto/16", RERUN_OF_TASK_5, (6, 16)),  # the task id is the shard, whatever the array
        ("auto", {**RERUN_OF_TASK_5, "KREA_BATCH_SHARDS": "16"}, (6, 16)),
        ("auto/16", _slurm(3, 0, 7), (4, 16)),  # half of a split's tasks now: the count given
        ("auto/3", {"JOB_COMPLETION_INDEX": "2"}, (3, 3)),
        ("auto", {"JOB_COMPLETION_INDEX": "0", "KREA_BATCH_SHARDS": "5"}, (1, 5)),
        ("auto", {"AWS_BATCH_JOB_ARRAY_INDEX": "9", "AWS_BATCH_JOB_ARRAY_SIZE": "10"}, (10, 10)),
        ("2/4", {"SLURM_ARRAY_TASK_ID": "0"}, (2, 4)),  # given by hand, the scheduler is not read
    ],
)
def test_auto_makes_the_schedulers_task_t_shard_t_plus_1(
    flag: str, environ: dict[str, str], expected: tuple[int, int]
) -> None:
    assert parse_shard(flag, environ) == expected


@pytest.mark.parametrize(
    ("flag", "environ", "says"),
    [
        ("auto", {}, "SLURM_ARRAY_TASK_ID"),
        ("auto", {}, "JOB_COMPLETION_INDEX"),
        ("auto", {}, "AWS_BATCH_JOB_ARRAY_INDEX"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "--shard auto/N or set KREA_BATCH_SHARDS=N"),
        ("auto/2", {"JOB_COMPLETION_INDEX": "2"}, "Kubernetes index 2 is past a split of 2"),
        ("auto/3", {"JOB_COMPLETION_INDEX": "0", "KREA_BATCH_SHARDS": "4"}, "says 4 shards"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "x1", "SLURM_ARRAY_TASK_COUNT": "4"}, "whole number"),
        ("auto", RERUN_OF_TASK_5, "says which shard this is, but not of how many"),
        ("auto", _slurm(16, 1, 16), "(its array is 1-16, not a whole split numbered 0 to N-1)"),
        ("auto/8", _slurm(12, 0, 15), "task 12 is past a split of 8 shards"),
        ("automatic", {}, "use I/N, where I counts from 1"),
        (
            "0/16",
            {},
            "I counts from 1 (1/N … N/N); for a scheduler's task id, which counts "
            "from 0, use --shard auto",
        ),
        ("17/16", {}, "I counts from 1"),
        ("0/0", {}, "N must be at least 1"),
    ],
)
def test_a_shard_that_cannot_be_told_is_a_usage_error_saying_the_convention(
    flag: str, environ: dict[str, str], says: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        parse_shard(flag, environ)


def test_a_task_rerun_alone_takes_the_count_from_its_folder() -> None:
    asked = []

    def recorded() -> tuple[int, int]:
        asked.append(True)
        return (6, 16)

    assert parse_shard("auto", RERUN_OF_TASK_5, recorded) == (6, 16)
    assert asked
    asked.clear()  # where the count is known, the folder is not read: it is checked later
    assert parse_shard("auto", _slurm(5, 0, 7), recorded) == (6, 8)
    assert parse_shard("auto/4", {"JOB_COMPLETION_INDEX": "1"}, recorded) == (2, 4)
    assert not asked
    with pytest.raises(UsageError, match="the output folder records no split yet"):
        parse_shard("auto", RERUN_OF_TASK_5, lambda: None)


async def _krea_batch(*args: str, env: dict[str, str]) -> None:
    code, stderr = await cli_process(*args, env=env)
    assert code == 0, stderr


async def test_four_shards_of_a_slurm_array_share_an_account_and_merge_whole(
    tmp_path: Path,
) -> None:
    # One account that runs 8 jobs at once; the manifest asks for 8. Four shards each take a
    # quarter of it (2), so together they never pass the account's limit (no 429).
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(40, concurrency=8, poll_interval=0.05))
    config = EmulatorConfig(latency=Latency.parse("fixed:0.1"), concurrency_limit=8)
    async with run_emulator(config) as emu:
        tasks = []
        for task in range(4):  # as `sbatch --array=0-3` starts them: all at once
            slurm = _slurm(task, 0, 3, KREA_API_TOKEN="shared-account")
            out = str(tmp_path / f"shard-{task}")
            run = ("run", str(manifest), "--api-base", emu.url, "--shard", "auto", "--out", out)
            tasks.append(_krea_batch(*run, env=slurm))
        await asyncio.gather(*tasks)
        shards = [str(tmp_path / f"shard-{task}") for task in range(4)]
        await _krea_batch("merge", *shards, "--out", str(tmp_path / "merged"), env={})
        stats = emu.emulator.snapshot()
    records = [
        json.loads(line)
        for line in (tmp_path / "merged" / "results.jsonl").read_text().splitlines()
    ]
    assert len(records) == 40
    assert len({r["key"] for r in records}) == 40
    assert {r["status"] for r in records} == {"completed"}
    assert stats["submits"] == 40
    assert stats["duplicate_submits"] == 0
    assert stats.get("refused_429", 0) == 0
    per_shard = [
        json.loads((tmp_path / f"shard-{task}" / "summary.json").read_text()) for task in range(4)
    ]
    assert all(summary["settings"]["concurrency"] == 2 for summary in per_shard)
    assert all(summary["counts"]["completed"] >= 1 for summary in per_shard)


def test_a_task_rerun_alone_resumes_its_shard_and_another_split_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(24))
    mine = sum(1 for spec in expand(load_manifest(manifest)) if in_shard(spec.key, (6, 8)))
    monkeypatch.setenv("KREA_API_TOKEN", "the-account")

    def task(environ: dict[str, str], out: Path) -> int:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        return main(["run", str(manifest), "--api-base", url, "--shard", "auto", "--out", str(out)])

    out = tmp_path / "shard-5"
    with emulator_thread(EmulatorConfig(latency=Latency.parse("fixed:0.01"))) as emu:
        url = emu.url
        assert task(_slurm(5, 0, 7), out) == 0  # the round: `sbatch --array=0-7`
        identity = json.loads((out / "krea-batch.json").read_text())
        assert identity["shard"] == [6, 8]
        assert identity["manifests"] == [
            {"name": "jobs.yaml", "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}
        ]
        capsys.readouterr()
        assert task(RERUN_OF_TASK_5, out) == 0  # `sbatch --array=5`: 6 of 8, resumed
        assert f"0 completed, 0 failed, {mine} already done" in capsys.readouterr().out
        assert task(_slurm(5, 0, 5), out) == 2  # `sbatch --array=0-5`: 6 of 6, refused
        err = capsys.readouterr().err
        assert "holds shard 6 of 8 (task 5), and this run is shard 6 of 6 (task 5)" in err
        assert "nothing was sent" in err
        assert "--shard auto/8" in err
        never = tmp_path / "shard-3"  # a task whose folder was never made, rerun alone
        assert task(_slurm(3, 3, 3), never) == 2
        assert "pass --shard auto/N" in capsys.readouterr().err
        assert not never.exists()
        stats = emu.emulator.snapshot()
    assert stats["submits"] == mine
    assert stats["duplicate_submits"] == 0


def test_more_shards_than_the_account_runs_at_once_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(4))
    out = tmp_path / "out"
    run = ["run", str(manifest), "--api-base", "http://127.0.0.1:9", "--out", str(out)]
    assert main([*run, "--shard", "1/16", "--concurrency", "8"]) == 2
    err = capsys.readouterr().err
    assert "16 shards cannot share a concurrency of 8" in err
    assert "raise --concurrency to 16" in err
    assert not out.exists()
    assert main(["plan", str(manifest), "--shard", "1/16", "--concurrency", "8"]) == 2


def test_plan_shows_every_shard_of_the_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(40, model="flux-1-dev").replace("128x128", "512x512"))
    assert main(["plan", str(manifest), "--shard", "2/4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    specs = list(expand(load_manifest(manifest)))
    assert plan["shard"] == [2, 4]
    assert [s["task"] for s in plan["shards"]] == [0, 1, 2, 3]
    for shard in plan["shards"]:
        theirs = [s for s in specs if in_shard(s.key, (shard["shard"], 4))]
        assert shard["jobs"] == len(theirs)
        assert shard["estimated_usd"] == pytest.approx(sum(s.usd or 0 for s in theirs), abs=1e-4)
    assert plan["jobs"] == plan["shards"][1]["jobs"]
    assert plan["per_shard"] == {"concurrency": 2, "rate_limit_per_s": 250.0}
    assert main(["plan", str(manifest), "--shard", "2/4"]) == 0
    text = capsys.readouterr().out
    assert f"shard 2 of 4 (task 1): {plan['jobs']} of 40 jobs" in text
    assert "<- this one" in text
