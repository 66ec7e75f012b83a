"""Sharded output (--format webdataset|parquet): every job once across shards, shards that
open with the libraries people read them with, and resume per job after a kill -9."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.outputs import FileEntry, OutputFolder, ResultRecord
from runner.outputs.images import intact
from runner.outputs.results_log import key_digest
from runner.outputs.writers import Fetched, open_writer
from tests.engine_helpers import FAST, as_records, manifest_text, read_results
from tests.test_resume import kill_at, run_to_end

JOBS = 16


def members(out: Path) -> dict[str, list[str]]:
    """Every sample key in the written shards, with the shards holding it."""
    found: dict[str, list[str]] = {}
    for shard in sorted((out / "shards").iterdir()):
        if shard.suffix == ".tar":
            with tarfile.open(shard) as tar:
                keys = [m.name.rsplit(".", 1)[0] for m in tar if m.name.endswith(".json")]
        else:
            keys = pq.read_table(shard, columns=["key"]).column("key").to_pylist()
        for key in keys:
            found.setdefault(key, []).append(shard.name)
    return found


def check_shards(out: Path, jobs: int) -> None:
    """Every completed job in exactly one shard, each named by its record; nothing staged."""
    records = read_results(out)
    assert len({r["key"] for r in records}) == len(records) == jobs
    assert {r["status"] for r in records} == {"completed"}
    held = members(out)
    assert {k: v for k, v in held.items() if len(v) > 1} == {}, "a job in two shards"
    assert set(held) == {r["key"] for r in records}
    for record in records:
        [entry] = record["files"]
        shard, member = entry["path"].split("#")
        assert held[record["key"]] == [Path(shard).name]
        assert member.startswith(record["key"])
    assert list((out / ".krea-batch" / "staging").iterdir()) == []
    assert not list((out / "shards").glob(".*")), "a hidden shard left behind"


# The webdataset library leaves a shard open once read: its warning, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("format", ["webdataset", "parquet"])
async def test_shards_hold_every_job_once_and_load_back_whole(tmp_path: Path, format: str) -> None:
    out = tmp_path / "out"
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(JOBS, format=format, shard_size=5))
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        result = await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
        again = await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
    assert result.counts.completed == JOBS
    assert again.counts.skipped == JOBS
    check_shards(out, JOBS)
    shards = sorted(p for p in (out / "shards").iterdir())
    assert len(shards) == 4  # 5 + 5 + 5 + 1: the last written when nothing was left
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in shards]
    loaded = datasets.load_dataset(str(out), split="train")  # by its card
    assert len(loaded) == JOBS
    if format == "parquet":
        row = loaded[0]
        assert row["image"].size == (128, 128)  # decoded as an image
        assert row["prompt"] == "a tiny test image"
        assert json.loads(row["params"])["width"] == 128
    else:
        import webdataset as wds

        samples = list(wds.WebDataset(files, shardshuffle=False).decode("pil"))
        assert len(samples) == JOBS
        assert samples[0]["png"].size == (128, 128)
        assert samples[0]["json"]["model"] == "seedream-4"


async def test_a_folder_keeps_its_format(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(2, format="parquet"))
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        await run_batch(manifest, tmp_path / "out", api_base=emu.url, token="t", options=FAST)
        from runner.errors import UsageError

        with pytest.raises(UsageError, match="--format parquet"):
            await run_batch(
                manifest,
                tmp_path / "out",
                api_base=emu.url,
                token="t",
                options=FAST,
                overrides={"format": "webdataset"},
            )


async def test_a_sharded_folder_without_its_journal_pays_for_nothing_again(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(6, format="webdataset", shard_size=4))
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
        shutil.rmtree(out / ".krea-batch")
        again = await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
        assert emu.emulator.snapshot()["submits"] == 6, "the members' sha256 proved them there"
    assert again.counts.skipped == 6


@pytest.mark.parametrize(("format", "nth"), [("webdataset", 4), ("webdataset", 11), ("parquet", 7)])
async def test_kill_9_mid_shard_then_rerun_puts_every_job_in_one_shard(
    tmp_path: Path, format: str, nth: int
) -> None:
    manifest = tmp_path / "jobs.yaml"
    text = manifest_text(
        JOBS,
        concurrency=4,
        poll_interval=0.05,
        submit_concurrency=1,
        format=format,
        shard_size=5,
    )
    manifest.write_text(text)
    out = tmp_path / "out"
    config = EmulatorConfig(latency=Latency.parse("fixed:0.2"))
    async with run_emulator(config) as emu:
        await kill_at(emu, "download", nth, manifest, out)
        code, stderr = await run_to_end(emu, manifest, out)
        stats = emu.emulator.snapshot()
    assert code == 0, stderr
    assert stats["duplicate_submits"] == 0
    assert stats["submits"] == JOBS
    check_shards(out, JOBS)


def _png(path: Path, shade: int) -> Fetched:
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path, "PNG")
    data = path.read_bytes()
    return Fetched(path, hashlib.sha256(data).hexdigest(), len(data), "image/png", "u")


def _record(key: str, entry: FileEntry) -> ResultRecord:
    return as_records([{"key": key, "status": "completed", "files": [entry.to_json()]}])[0]


@pytest.mark.parametrize("format", ["webdataset", "parquet"])
def test_a_crash_with_samples_staged_is_finished_by_the_next_writer(
    tmp_path: Path, format: str
) -> None:
    """Shard 0 full but unwritten, shard 1 half full, one image placed whose job never got its
    done line: the next run writes shard 0, keeps filling shard 1, drops the orphan."""
    records: list[ResultRecord] = []
    with OutputFolder(tmp_path) as folder:
        writer = open_writer(folder, format, shard_size=3)
        writer.open(lambda: key_digest([]), lambda: iter(()))
        for n in range(5):
            fetched = _png(writer.partial_path(f"k{n}"), n)
            entry = writer.place(fetched, f"k{n}", None)
            records.append(writer.assign(_record(f"k{n}", entry)))  # the journal's done line
        writer.place(_png(writer.partial_path("orphan"), 9), "orphan", None)
        # kill -9 here: nothing finished() or closed; the journal holds the five records
        writer.results.close()  # as the process's end would
    assert [r.files[0].path.split("#")[0] for r in records] == [
        f"shards/0000{n}{writer.suffix}" for n in (0, 0, 0, 1, 1)
    ]
    with OutputFolder(tmp_path) as folder:
        writer = open_writer(folder, format, shard_size=3)
        writer.open(lambda: key_digest(r.key for r in records), lambda: iter(records))
        assert [p.name for p in (tmp_path / "shards").iterdir()] == [f"00000{writer.suffix}"]
        entry = writer.place(_png(writer.partial_path("k5"), 5), "k5", None)
        last = writer.assign(_record("k5", entry))
        assert last.files[0].path.startswith(f"shards/00001{writer.suffix}#")
        writer.finished(last)
        writer.close(lambda: iter([*records, last]), complete=False)
    held = members(tmp_path)
    assert held == {f"k{n}": [f"0000{n // 3}{writer.suffix}"] for n in range(6)}
    assert not list((tmp_path / ".krea-batch" / "staging").iterdir())
    for record in [*records, last]:
        assert intact(tmp_path, record.files[0])


async def test_retry_failed_puts_the_failed_jobs_into_shards_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(10, format="webdataset", shard_size=4, max_attempts=1))
    config = EmulatorConfig(latency=Latency.parse("fixed:0.02"), failure_rate=0.5, seed=3)
    async with run_emulator(config) as emu:
        first = await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
        assert 0 < first.counts.failed < 10
        emu.emulator.store.config = dataclasses.replace(config, failure_rate=0.0)
        retry = dataclasses.replace(FAST, retry_failed=True)
        again = await run_batch(manifest, out, api_base=emu.url, token="t", options=retry)
    assert again.counts.completed == first.counts.failed
    check_shards(out, 10)  # one record a job: the failed ones' lines were replaced
