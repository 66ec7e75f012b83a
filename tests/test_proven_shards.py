"""Shards a run can prove: sealed with their size and sha256, checked on every run, rebuilt
from what still proves itself, lost images fetched again from their jobs (never resubmitted),
and an exit code that says whether the destination holds everything."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.errors import DestinationError, DiskError
from runner.outputs.destination import RemoteDestination
from runner.outputs.shard_files import member_sha256
from runner.outputs.shard_ledger import ShardLedger
from runner.outputs.writers.shards import ShardWriter
from tests.engine_helpers import FAST, manifest_text, read_results, write_ambiguous_journal
from tests.in_process import in_process
from tests.test_shards import check_shards

QUICK = EmulatorConfig(latency=Latency.parse("fixed:0.02"))
JOBS = 6


def every_member_matches(out: Path) -> None:
    """Each record's member is in its shard with the record's sha256."""
    for record in read_results(out):
        for entry in record["files"]:
            shard, member = entry["path"].split("#")
            assert member_sha256(out / shard, member) == entry["sha256"], record["key"]


def write_manifest(tmp_path: Path, format: str = "webdataset", shard_size: int = 4) -> Path:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(JOBS, format=format, shard_size=shard_size))
    return manifest


@pytest.mark.parametrize("format", ["webdataset", "parquet"])
async def test_each_sealed_shard_is_journaled_with_its_size_and_sha256(
    tmp_path: Path, format: str
) -> None:
    out = tmp_path / "out"
    async with in_process(QUICK) as emu:
        await run_batch(write_manifest(tmp_path, format), out, **emu.via, token="t")
    sealed = ShardLedger(out / ".krea-batch" / "shards.jsonl").sealed
    shards = sorted((out / "shards").iterdir())
    assert sorted(sealed) == [p.name for p in shards]
    for path in shards:
        data = path.read_bytes()
        assert sealed[path.name].size == len(data)
        assert sealed[path.name].sha256 == hashlib.sha256(data).hexdigest()
    assert sum(s.samples for s in sealed.values()) == JOBS


async def test_a_truncated_shard_is_rebuilt_and_its_lost_images_fetched_again(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path)
    async with in_process(QUICK) as emu:
        await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        first = out / "shards" / "00000.tar"
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])  # cut in half
        again = await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        submits = emu.emulator.snapshot()["submits"]
    assert submits == JOBS, "lost images come back from their jobs, never a new submit"
    assert again.exit_code == 0
    assert 1 <= again.counts.refetched <= 4
    check_shards(out, JOBS)
    every_member_matches(out)


def stop_before_the_last_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run closes as one that stopped early: the last shard stays staged."""
    close = ShardWriter.close

    def early(self: ShardWriter, records: Any, complete: bool, size: int | None = None) -> None:
        close(self, records, False, size)

    monkeypatch.setattr(ShardWriter, "close", early)


def other_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), "red").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["replaced", "staging removed"])
async def test_a_staged_image_that_changed_or_went_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path)
    async with in_process(QUICK) as emu:
        with monkeypatch.context() as patch:
            stop_before_the_last_shard(patch)
            await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        staging = out / ".krea-batch" / "staging"
        staged = sorted(staging.iterdir())
        assert len(staged) == 2, "4 in the first shard, 2 staged for the next"
        if damage == "replaced":
            staged[0].write_bytes(other_png())
        else:
            shutil.rmtree(staging)
        again = await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        submits = emu.emulator.snapshot()["submits"]
    assert submits == JOBS
    assert again.exit_code == 0
    assert again.counts.refetched == (1 if damage == "replaced" else 2)
    check_shards(out, JOBS)
    every_member_matches(out)


def file_url(path: Path) -> str:
    return "file://" + str(path)


async def test_shards_not_put_at_the_destination_leave_the_run_non_zero_until_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    manifest = write_manifest(tmp_path)
    state = tmp_path / "state"

    def unreachable(self: RemoteDestination, local: Path, relative: str) -> None:
        raise DestinationError(self.url, "ConnectionError: endpoint gone")

    async with in_process(QUICK) as emu:
        with monkeypatch.context() as patch:
            patch.setattr(RemoteDestination, "put", unreachable)
            blinked = await run_batch(
                manifest, file_url(dest), **emu.via, token="t", options=FAST,
                state_dir=state,
            )  # fmt: skip
        assert blinked.exit_code == 3
        assert blinked.stopped is not None
        assert "2 shard(s) not yet at file://" in blinked.stopped
        assert not (dest / "shards").exists()
        again = await run_batch(
            manifest, file_url(dest), **emu.via, token="t", options=FAST, state_dir=state
        )
        submits = emu.emulator.snapshot()["submits"]
    assert again.exit_code == 0
    assert submits == JOBS
    assert sorted(p.name for p in (dest / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    assert "results.jsonl, summary.json" in blinked.stopped
    assert len(read_results(dest)) == JOBS, "the run's own files put there by the rerun"
    assert (dest / "krea-batch.json").is_file()


async def test_shards_gone_from_the_destination_are_made_again_from_their_jobs(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    manifest = write_manifest(tmp_path)
    state = tmp_path / "state"
    async with run_emulator(QUICK) as emu:
        kwargs: dict[str, Any] = {"api_base": emu.url, "token": "t", "options": FAST}
        await run_batch(manifest, file_url(dest), state_dir=state, **kwargs)
        shutil.rmtree(dest / "shards")  # the bucket emptied behind the run's back
        again = await run_batch(manifest, file_url(dest), state_dir=state, **kwargs)
        submits = emu.emulator.snapshot()["submits"]
    assert submits == JOBS
    assert again.exit_code == 0
    assert again.counts.refetched == JOBS
    records = {r["key"]: r for r in read_results(state)}
    for record in records.values():
        [entry] = record["files"]
        shard, member = entry["path"].split("#")
        assert member_sha256(dest / shard, member) == entry["sha256"]


def test_disk_errors_name_their_cause_and_advise_for_it() -> None:
    full = DiskError("/data/out", OSError(errno.ENOSPC, "No space left on device"))
    denied = DiskError("/data/out", PermissionError(errno.EACCES, "Permission denied"))
    bucket = DiskError("/state", DestinationError("s3://b/x", "NoSuchBucket: bucket gone"))
    assert "ENOSPC" in str(full)
    assert "free some space" in full.advice()
    assert "EACCES" in str(denied)
    assert "write access" in denied.advice()
    assert "free" not in denied.advice()
    assert str(bucket) == "cannot write to s3://b/x: NoSuchBucket: bucket gone"
    assert "free" not in bucket.advice()


async def test_an_ambiguous_jobs_paid_images_reach_a_remote_destination(tmp_path: Path) -> None:
    """The candidates' images of an ambiguous job (paid for) go where the dataset goes."""

    from runner.manifest import expand, parse_manifest

    manifest = parse_manifest(manifest_text(2, format="webdataset"))
    spec = next(iter(expand(manifest)))
    dest = tmp_path / "dest"
    dest.mkdir()
    state = tmp_path / "state"
    async with in_process(QUICK) as emu:
        model = emu.emulator.catalog.resolve("seedream-4")
        ids = [emu.emulator.store.create(model, dict(spec.body), None).id for _ in range(2)]
        write_ambiguous_journal(state, spec.key, ids)
        result = await run_batch(
            manifest, file_url(dest), **emu.via, token="t", options=FAST, state_dir=state
        )
    assert result.exit_code == 1
    unmatched = sorted(p.name for p in (dest / "images" / "_unmatched").iterdir())
    assert unmatched == sorted(f"{i}.png" for i in ids)
    assert not list((state / "images").rglob("*.png")), "not left behind in the state folder"


@pytest.mark.parametrize("format", ["files", "webdataset"])
async def test_a_torn_journal_line_is_no_lost_job_when_results_and_image_prove_it(
    tmp_path: Path, format: str
) -> None:
    """The done (and submitted) lines of one job torn in the middle of the journal: its
    record in results.jsonl and its intact image prove it done; nothing is sent or fetched."""
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path, format)
    async with in_process(QUICK) as emu:
        await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        journal = out / ".krea-batch" / "journal.jsonl"
        lines = journal.read_bytes().splitlines(keepends=True)
        victim = json.loads(lines[-1])["k"] if b'"done"' in lines[-1] else None
        victim = victim or next(json.loads(x)["k"] for x in lines if b'"e":"done"' in x)
        for i, line in enumerate(lines):
            event = json.loads(line)
            if event.get("k") == victim and event["e"] in ("done", "submitted"):
                lines[i] = line[: len(line) // 2] + b"\n"  # torn, then written past
        journal.write_bytes(b"".join(lines))
        again = await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        submits = emu.emulator.snapshot()["submits"]
    assert submits == JOBS
    assert again.exit_code == 0
    assert again.counts.skipped == JOBS
    assert again.counts.refetched == 0
    assert again.counts.ambiguous_jobs == 0
    records = read_results(out)
    assert sorted(r["key"] for r in records) == sorted({r["key"] for r in records})
    assert len(records) == JOBS
    assert victim in {r["key"] for r in records}


async def test_merge_refuses_a_shard_that_is_not_as_its_run_sealed_it(tmp_path: Path) -> None:
    import dataclasses

    from runner.errors import UsageError
    from runner.outputs.merge import merge

    manifest = write_manifest(tmp_path)
    async with in_process(QUICK) as emu:
        for index in (1, 2):
            options = dataclasses.replace(FAST, shard=(index, 2))
            out = tmp_path / f"shard-{index}"
            await run_batch(manifest, out, **emu.via, token="t", options=options)
    [shard, *_] = sorted((tmp_path / "shard-2" / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:-512])
    with pytest.raises(UsageError, match=r"where its run sealed .*run that shard's"):
        merge([tmp_path / "shard-1", tmp_path / "shard-2"], tmp_path / "merged")


async def test_an_endpoint_that_blinks_costs_a_pause_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the first puts fails once (an endpoint gone for a moment): tried again, the
    run ends whole with every image at the destination."""
    dest = tmp_path / "dest"
    dest.mkdir()
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(3))
    failed: set[str] = set()
    put_once = RemoteDestination._put_once

    def blinking(self: RemoteDestination, local: Path, relative: str) -> None:
        if relative.startswith("images/") and relative not in failed:
            failed.add(relative)
            raise DestinationError(self.url, "ConnectionError: endpoint gone")
        put_once(self, local, relative)

    monkeypatch.setattr(RemoteDestination, "_put_once", blinking)
    monkeypatch.setattr(RemoteDestination, "retry_pauses", (0.0, 0.0))
    async with in_process(QUICK) as emu:
        result = await run_batch(
            manifest, file_url(dest), **emu.via, token="t", options=FAST,
            state_dir=tmp_path / "state",
        )  # fmt: skip
    assert result.exit_code == 0
    assert len(failed) == 3
    assert len(list((dest / "images").rglob("*.png"))) == 3


@pytest.mark.parametrize(
    ("name", "size"), [("a.png", 1234), ("0123456789abcdef-1.json", 99_999_999), ("é.txt", 5)]
)
def test_a_members_header_is_the_one_tarfile_writes(name: str, size: int) -> None:
    import tarfile

    from runner.outputs.writers.webdataset import header

    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    assert header(name, size) == info.tobuf(tarfile.PAX_FORMAT)


@pytest.mark.parametrize("side", [(1, 1), (128, 96), (3000, 17)])
def test_a_pngs_size_is_read_from_its_header_as_pillow_reads_it(side: tuple[int, int]) -> None:
    from runner.outputs.images import image_size

    buffer = io.BytesIO()
    Image.new("L", side).save(buffer, format="PNG")
    assert image_size(buffer.getvalue()) == side
    assert image_size(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) is None  # cut short: Pillow's verdict
