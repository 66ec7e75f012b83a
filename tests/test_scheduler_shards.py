"""Shards started by a scheduler: ``--shard auto`` as a Slurm array, a Kubernetes Indexed Job
or an AWS Batch array sees it, and four shards sharing one account, merged."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.errors import UsageError
from runner.sharding import parse_shard
from tests.engine_helpers import manifest_text


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        ("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, (1, 4)),
        (
            "auto",
            {
                "SLURM_ARRAY_TASK_ID": "7",
                "SLURM_ARRAY_TASK_MIN": "4",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (4, 4),
        ),
        (
            "auto",
            {
                "SLURM_ARRAY_TASK_ID": "6",
                "SLURM_ARRAY_TASK_MIN": "2",
                "SLURM_ARRAY_TASK_MAX": "8",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (3, 4),
        ),
        ("auto/3", {"JOB_COMPLETION_INDEX": "2"}, (3, 3)),
        ("auto", {"JOB_COMPLETION_INDEX": "0", "KREA_BATCH_SHARDS": "5"}, (1, 5)),
        ("auto", {"AWS_BATCH_JOB_ARRAY_INDEX": "9", "AWS_BATCH_JOB_ARRAY_SIZE": "10"}, (10, 10)),
        ("2/4", {"SLURM_ARRAY_TASK_ID": "0"}, (2, 4)),  # given by hand, the scheduler is not read
    ],
)
def test_auto_takes_the_shard_from_the_scheduler(
    flag: str, environ: dict[str, str], expected: tuple[int, int]
) -> None:
    assert parse_shard(flag, environ) == expected


@pytest.mark.parametrize(
    ("flag", "environ", "says"),
    [
        ("auto", {}, "SLURM_ARRAY_TASK_ID"),
        ("auto", {}, "JOB_COMPLETION_INDEX"),
        ("auto", {}, "AWS_BATCH_JOB_ARRAY_INDEX"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "--shard auto/N or set KREA_BATCH_SHARDS"),
        ("auto/2", {"JOB_COMPLETION_INDEX": "2"}, "shard 3 of 2"),
        ("auto/3", {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}, "says 4"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "x1", "SLURM_ARRAY_TASK_COUNT": "4"}, "whole number"),
        (
            "auto",
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "9",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            "a list with gaps",
        ),
        ("automatic", {}, "use I/N"),
    ],
)
def test_auto_without_a_usable_scheduler_is_a_usage_error(
    flag: str, environ: dict[str, str], says: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        parse_shard(flag, environ)


async def _krea_batch(*args: str, env: dict[str, str]) -> int:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await child.communicate()
    assert child.returncode is not None
    assert child.returncode == 0, stderr.decode()
    return child.returncode


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
        for task in range(4):  # as `sbatch --array=10-13` starts them: all at once
            slurm = {
                "SLURM_ARRAY_TASK_ID": str(10 + task),
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_MAX": "13",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "KREA_API_TOKEN": "shared-account",
            }
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


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_kubernetes_example_numbers_its_shards_as_the_job_does() -> None:
    job = yaml.safe_load((EXAMPLES / "kubernetes" / "indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    command = " ".join(container["args"])
    assert "--shard auto" in command
    assert "${SHARD}" in command  # each pod its own folder
    completions = spec["completions"]
    assert int(env["KREA_BATCH_SHARDS"]) == completions
    shards = {
        parse_shard("auto", {"JOB_COMPLETION_INDEX": str(index), **env})
        for index in range(completions)
    }
    assert shards == {(i, completions) for i in range(1, completions + 1)}


def test_the_slurm_example_scripts_are_valid_shell() -> None:
    for script in sorted((EXAMPLES / "slurm").iterdir()):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False)
        assert checked.returncode == 0, (script, checked.stderr)
    text = (EXAMPLES / "slurm" / "krea-batch.sbatch").read_text()
    assert "--shard auto" in text
    assert "--array=0-" in text
