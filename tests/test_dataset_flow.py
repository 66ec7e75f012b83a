"""The dataset flow as a user runs it: a CSV prompts file with extra columns, a four-task
Slurm-style array (``--shard auto``) with one task killed and run again, ``merge``, then
``load_dataset`` on the merged folder: every job exactly once in one train split, with the same
fields whatever the format. Each step is the CLI in its own process, as on a cluster."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from runner.emulator import EmulatorConfig, Latency, RunningEmulator, run_emulator
from tests.conftest import ROOT

datasets = pytest.importorskip("datasets")

TASKS = 4
ROWS = 12
KILLED = 2  # the task killed mid-run, then run again alone


def write_inputs(tmp_path: Path, format: str) -> Path:
    rows = ["prompt,style,mood"] + [
        f"a lighthouse number {i},{'ink' if i % 2 else 'oil'},{'calm' if i % 3 else 'storm'}"
        for i in range(ROWS)
    ]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        textwrap.dedent(f"""
            version: 1
            jobs:
              - prompts_file: rows.csv
                model: seedream-4
                sizes: [128x128]
                seed: auto
            run: {{concurrency: 8, rate_limit: 1000, poll_interval: 0.05,
                   format: {format}, shard_size: 2}}
        """)
    )
    return manifest


def slurm_env(task: int) -> dict[str, str]:
    return {
        **os.environ,
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": str(TASKS - 1),
        "SLURM_ARRAY_TASK_COUNT": str(TASKS),
        "KREA_API_TOKEN": "the-account",
    }


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        *args,
        cwd=ROOT,
        env=env or dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """Its exit code and stderr; a process the test stops waiting for is killed, never left."""
    try:
        _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def run_task(manifest: Path, out: str, url: str, task: int) -> tuple[int, str]:
    args = ("run", str(manifest), "--api-base", url, "--shard", "auto", "--out", out)
    return await finish(await start(*args, env=slurm_env(task)))


async def kill_after_downloads(
    emu: RunningEmulator, manifest: Path, out: str, task: int, downloads: int
) -> None:
    """Start ``task`` alone and kill -9 it once it fetched ``downloads`` images (its other
    jobs running: the rerun polls them, never sends them again)."""
    seen = asyncio.Event()
    count = 0

    def watch(kind: str, job: Any) -> None:
        nonlocal count
        if kind == "download":
            count += 1
            if count >= downloads:
                seen.set()

    emu.emulator.observers.append(watch)
    args = ("run", str(manifest), "--api-base", emu.url, "--shard", "auto", "--out", out)
    process = await start(*args, env=slurm_env(task))
    try:
        await asyncio.wait_for(seen.wait(), timeout=30)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
        emu.emulator.observers.remove(watch)


async def run_the_array(manifest: Path, shard_out: Callable[[int], str], merged: str) -> None:
    """The array with one task killed and rerun, then the merge; the emulator's figures."""
    config = EmulatorConfig(latency=Latency.parse("fixed:0.2"))
    async with run_emulator(config) as emu:
        await kill_after_downloads(emu, manifest, shard_out(KILLED), KILLED, 1)
        # Requeued at once, before its siblings start: a POST cut short by the kill is then
        # matched in a listing of its own jobs (siblings' jobs on the same key would make it
        # ambiguous; telling them apart is issue #30's).
        ended = [await run_task(manifest, shard_out(KILLED), emu.url, KILLED)]
        others = [task for task in range(TASKS) if task != KILLED]
        ended += await asyncio.gather(
            *(run_task(manifest, shard_out(task), emu.url, task) for task in others)
        )
        for code, stderr in ended:
            assert code == 0, stderr
        code, stderr = await finish(
            await start("merge", *(shard_out(t) for t in range(TASKS)), "--out", merged)
        )
        assert code == 0, stderr
        stats = emu.emulator.snapshot()
    assert stats["submits"] == ROWS, "the killed task paid for nothing twice"
    assert stats["duplicate_submits"] == 0


def fields_of(loaded: Any, format: str) -> tuple[set[str], list[dict[str, Any]]]:
    """The field names of a loaded dataset's rows and the rows, the image aside."""
    if format == "webdataset":
        rows = [dict(row["json"]) for row in loaded]
    else:
        rows = [{k: v for k, v in row.items() if k != "image"} for row in loaded]
    names = set(rows[0])
    assert all(set(row) == names for row in rows)
    return names, rows


FORMATS = ["files", "webdataset", "parquet"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loaded_by_format(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each format's array run, merged, loaded (once for the module's checks)."""

    async def one(format: str) -> Any:
        base = tmp_path_factory.mktemp(format)
        manifest = write_inputs(base, format)
        merged = base / "merged"
        await run_the_array(manifest, lambda task: str(base / f"shard-{task}"), str(merged))
        return datasets.load_dataset(
            str(merged), split="train", cache_dir=str(base / "cache")
        ), merged

    return dict(zip(FORMATS, await asyncio.gather(*map(one, FORMATS)), strict=True))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("format", FORMATS)
def test_a_killed_array_merges_into_one_split_with_every_job_once(
    loaded_by_format: dict[str, Any], format: str
) -> None:
    loaded, merged = loaded_by_format[format]
    names, rows = fields_of(loaded, format)
    assert len(rows) == ROWS
    assert len({row["key"] for row in rows}) == ROWS
    assert sorted(row["prompt"] for row in rows) == sorted(
        f"a lighthouse number {i}" for i in range(ROWS)
    )
    assert {"var_style", "var_mood", "width", "height", "job_id", "params"} <= names
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["counts"]["completed"] == ROWS
    identity = json.loads((merged / "krea-batch.json").read_text())
    assert len(identity["merged_from"]) == TASKS


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_format_loads_with_the_same_fields_and_values(
    loaded_by_format: dict[str, Any],
) -> None:
    by_format = {f: fields_of(loaded_by_format[f][0], f) for f in FORMATS}
    names = {f: by_format[f][0] for f in FORMATS}
    assert names["files"] == names["parquet"] == names["webdataset"]
    comparable = names["files"] - {"job_id", "file"}  # each format ran its own jobs
    values = {
        f: sorted(json.dumps({k: row[k] for k in comparable}, sort_keys=True) for row in rows)
        for f, (_, rows) in by_format.items()
    }
    assert values["files"] == values["parquet"] == values["webdataset"]
