"""--out URL: shards go whole to an S3-compatible store (moto's server on 127.0.0.1, started
here), a rerun resumes, a rerun of a finished run writes nothing, and a machine with no state
pays for nothing the destination holds."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, Latency, run_emulator
from tests.engine_helpers import FAST, manifest_text

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

JOBS = 7


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: Any) -> str:
    """A fresh bucket, reached through the standard AWS variables only."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    name = "b" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name


def _objects(bucket: str) -> dict[str, Any]:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    found = {}
    for path, info in fs.find(bucket, detail=True).items():
        found[path] = info.get("LastModified")
    return found


async def test_parquet_shards_to_s3_resume_and_load_back(
    tmp_path: Path, bucket: str, s3_endpoint: str
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(JOBS, format="parquet", shard_size=3))
    out = f"s3://{bucket}/run"
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        kwargs: dict[str, Any] = {"api_base": emu.url, "token": "t", "options": FAST}
        first = await run_batch(manifest, out, state_dir=tmp_path / "state", **kwargs)
        objects = _objects(bucket)
        again = await run_batch(manifest, out, state_dir=tmp_path / "state", **kwargs)
        assert _objects(bucket) == objects, "a finished run's rerun writes no object"
        elsewhere = await run_batch(manifest, out, state_dir=tmp_path / "other", **kwargs)
        submits = emu.emulator.snapshot()["submits"]
    assert first.counts.completed == JOBS
    assert again.counts.skipped == JOBS
    assert elsewhere.counts.skipped == JOBS, "no local state: the destination's shards prove it"
    assert submits == JOBS
    names = sorted(path.split("/run/", 1)[1] for path in objects)
    assert names == [
        "README.md",
        "krea-batch.json",
        "results.jsonl",
        "shards/00000.parquet",
        "shards/00001.parquet",
        "shards/00002.parquet",
        "summary.json",
    ]
    assert not list((tmp_path / "state" / "shards").iterdir()), "uploaded, not kept twice"
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "parquet",
        data_files=f"s3://{bucket}/run/shards/*.parquet",
        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}},
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(loaded) == JOBS
    assert loaded[0]["image"].size == (128, 128)


async def test_an_unknown_scheme_is_a_usage_error(tmp_path: Path) -> None:
    from runner.errors import UsageError

    (tmp_path / "jobs.yaml").write_text(manifest_text(1))
    with pytest.raises(UsageError, match="no filesystem for nosuch://"):
        await run_batch(
            tmp_path / "jobs.yaml", "nosuch://x/y", api_base="http://127.0.0.1:9", token="t"
        )


async def test_a_bucket_that_is_not_there_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, bucket: str
) -> None:
    from runner.errors import UsageError

    (tmp_path / "jobs.yaml").write_text(manifest_text(1))
    with pytest.raises(UsageError, match="no such bucket"):
        await run_batch(
            tmp_path / "jobs.yaml",
            f"s3://{bucket}-missing/run",
            api_base="http://127.0.0.1:9",
            token="t",
            state_dir=tmp_path / "state",
        )
    assert not (tmp_path / "state").exists()


async def test_shards_at_s3_merge_into_s3_with_status_and_gallery_there(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import dataclasses
    import json

    import anyio

    from runner.cli import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))  # the state folders per URL
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(4, format="parquet", shard_size=2))
    base = f"s3://{bucket}/sets"
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        for index in (1, 2):
            options = dataclasses.replace(FAST, shard=(index, 2))
            await run_batch(
                manifest,
                f"{base}/shard-{index}",
                api_base=emu.url,
                token="t",
                options=options,
                state_dir=tmp_path / f"state-{index}",
            )
    merged = f"{base}/merged"
    code = await anyio.to_thread.run_sync(
        main, ["merge", f"{base}/shard-1", f"{base}/shard-2", "--out", merged]
    )
    assert code == 0, capsys.readouterr().err
    names = sorted(path.split("/merged/", 1)[1] for path in _objects(bucket) if "/merged/" in path)
    assert {"README.md", "krea-batch.json", "report.html", "results.jsonl", "summary.json"} <= set(
        names
    )
    shards = [n for n in names if n.startswith("shards/")]
    assert shards == [f"shards/{n:05d}.parquet" for n in range(len(shards))]
    thumbs = [n for n in names if n.startswith("report/thumbs/")]
    assert len(thumbs) == 4, "the gallery shows the images inside the shards"
    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["status", merged, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["completed"] == 4
    shard = f"{base}/shard-1"
    state = str(tmp_path / "state-1")
    assert await anyio.to_thread.run_sync(main, ["status", shard, "--state-dir", state]) == 0
    assert capsys.readouterr().out.startswith(f"{shard}: ")
    assert await anyio.to_thread.run_sync(main, ["report", shard]) == 0
    assert f"wrote {shard}/report.html" in capsys.readouterr().out


async def test_a_killed_array_to_s3_merges_there_and_loads_whole(
    tmp_path: Path, bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dataset flow with every folder at s3://: four Slurm-style tasks as processes, one
    killed and run again, merged from S3 into S3, loaded from there."""
    from tests.test_dataset_flow import ROWS, run_the_array, write_inputs

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))  # each task's state folder
    manifest = write_inputs(tmp_path, "parquet")
    base = f"s3://{bucket}/sets"
    await run_the_array(manifest, lambda task: f"{base}/shard-{task}", f"{base}/merged")
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "parquet",
        data_files=f"{base}/merged/shards/*.parquet",
        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}},
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(loaded) == ROWS
    assert len(set(loaded["key"])) == ROWS
    assert {"var_style", "var_mood", "width", "height"} <= set(loaded.column_names)
