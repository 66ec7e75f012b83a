"""``krea-batch verify OUT``: a sound folder verifies clean; a member changed in place, a shard
cut short, a garbled parquet shard, a changed staged or loose image are each named with their
job, a damaged shard is marked in the ledger, and the next run repairs it without a submit."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.batch import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.emulator.server import RunningEmulator
from runner.outputs import OutputFolder
from runner.outputs.shard_ledger import ShardLedger
from runner.outputs.verify import verify
from tests.engine_helpers import FAST, manifest_text, read_results

JOBS = 6


@pytest.fixture(autouse=True)
def _logging_kept() -> Iterator[None]:
    """main() points the root logger at this test's captured stderr: put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def emu() -> AsyncIterator[RunningEmulator]:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.01"))) as running:
        yield running


async def _batch(emu: RunningEmulator, tmp_path: Path, format: str, shard_size: int = 2) -> Path:
    """Run JOBS jobs into tmp_path/out; returns the folder."""
    manifest = tmp_path / "jobs.yaml"
    if not manifest.exists():
        manifest.write_text(manifest_text(JOBS, format=format, shard_size=shard_size))
    out = tmp_path / "out"
    result = await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
    assert result.exit_code == 0
    return out


def _verify(out: Path | str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["verify", str(out), *flags])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


def _ledger(out: Path) -> ShardLedger:
    return ShardLedger(out / ".krea-batch" / "shards.jsonl")


def _record_of(out: Path, shard: str) -> dict[str, Any]:
    """The first record whose image is in ``shard``."""
    return next(r for r in read_results(out) if r["files"][0]["path"].split("#")[0] == shard)


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _flip_member(shard: Path, member: str) -> None:
    """Change four bytes in the middle of a tar member: same length, other bytes."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    with open(shard, "r+b") as handle:
        handle.seek(info.offset_data + info.size // 2)
        data = handle.read(4)
        handle.seek(info.offset_data + info.size // 2)
        handle.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("format", ["webdataset", "parquet", "files"])
async def test_a_sound_folder_verifies_clean(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], format: str
) -> None:
    out = await _batch(emu, tmp_path, format)
    ledger = (out / ".krea-batch" / "shards.jsonl").read_bytes() if format != "files" else b""
    code, text = _verify(out, capsys)
    assert code == 0, text
    if format == "files":
        assert text.strip() == f"verified {JOBS} images: all as recorded"
    else:
        assert text.strip() == f"verified 3 shards, {JOBS} images: all as recorded"
        assert (out / ".krea-batch" / "shards.jsonl").read_bytes() == ledger, "nothing marked"


async def test_a_changed_member_is_named_marked_and_repaired_without_a_submit(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "webdataset")
    record = _record_of(out, "shards/00001.tar")
    member = record["files"][0]["path"].split("#")[1]
    _flip_member(out / "shards" / "00001.tar", member)
    code, text = _verify(out, capsys)
    assert code == 1
    assert f"{record['key']} (job id {record['job_id']})" in text
    assert "1 shard damaged (00001.tar:" in text
    assert "1 member changed" in text
    assert "nothing is submitted again" in text
    assert set(_ledger(out).damaged) == {"00001.tar"}

    submits = emu.emulator.snapshot()["submits"]
    await _batch(emu, tmp_path, "webdataset")
    assert emu.emulator.snapshot()["submits"] == submits, "repaired from its job, not resubmitted"
    assert _ledger(out).damaged == {}
    code, text = _verify(out, capsys)
    assert code == 0, text
    assert f"{JOBS} images: all as recorded" in text


async def test_a_truncated_shard_names_the_jobs_it_lost(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "webdataset")
    shard = out / "shards" / "00002.tar"
    lost = [r for r in read_results(out) if r["files"][0]["path"].startswith("shards/00002.tar")]
    os.truncate(shard, 1500)  # inside the first member's image
    code, text = _verify(out, capsys, "--json")
    assert code == 1
    report = json.loads(text)
    [check] = report["shard_checks"]
    assert (check["shard"], check["state"]) == ("shards/00002.tar", "damaged")
    assert check["marked_damaged"]
    assert "1,500 bytes where" in check["why"]
    assert {(j["key"], j["job_id"]) for j in check["missing"]} == {
        (r["key"], r["job_id"]) for r in lost
    }
    assert set(_ledger(out).damaged) == {"00002.tar"}


async def test_a_garbled_parquet_shard_is_marked_and_repaired(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "parquet")
    shard = out / "shards" / "00000.parquet"
    _write_at(shard, shard.stat().st_size - 64, b"\x00" * 64)  # its footer: it will not open
    code, text = _verify(out, capsys)
    assert code == 1
    assert "shards/00000.parquet: damaged: its sha256 is not the one sealed" in text
    assert "it does not read to its end" in text
    assert "2 members missing" in text
    for record in read_results(out):
        if record["files"][0]["path"].startswith("shards/00000.parquet#"):
            assert f"{record['key']} (job id {record['job_id']})" in text
    submits = emu.emulator.snapshot()["submits"]
    await _batch(emu, tmp_path, "parquet")
    assert emu.emulator.snapshot()["submits"] == submits
    assert _verify(out, capsys)[0] == 0


async def test_a_changed_image_of_a_files_folder_is_named(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "files")
    record = read_results(out)[2]
    image = out / record["files"][0]["path"]
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    (out / read_results(out)[4]["files"][0]["path"]).unlink()
    code, text = _verify(out, capsys)
    assert code == 1
    assert f"{record['files'][0]['path']}: image changed" in text
    assert f"{record['key']} (job id {record['job_id']})" in text
    assert "2 images missing or changed" in text


async def test_a_changed_staged_image_and_a_job_in_two_shards(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "webdataset")
    # The last shard as a crash before it was written leaves it: its images staged, no seal.
    record = _record_of(out, "shards/00002.tar")
    member = record["files"][0]["path"].split("#")[1]
    staging = out / ".krea-batch" / "staging"
    with tarfile.open(out / "shards" / "00002.tar") as tar:
        tar.extractall(staging, filter="data")
    for extra in [*staging.glob("*.json"), *staging.glob("*.txt")]:
        extra.unlink()
    (staging / member).write_bytes((staging / member).read_bytes()[:-1] + b"\x00")
    (out / "shards" / "00002.tar").unlink()
    ledger = out / ".krea-batch" / "shards.jsonl"
    kept = [line for line in ledger.read_text().splitlines(True) if "00002" not in line]
    ledger.write_text("".join(kept))
    # And a member of shard 0 copied into shard 1.
    other = _record_of(out, "shards/00000.tar")
    twice = other["files"][0]["path"].split("#")[1]
    with tarfile.open(out / "shards" / "00000.tar") as tar:
        info = tar.getmember(twice)
        data = tar.extractfile(info)
        assert data is not None
        with tarfile.open(out / "shards" / "00001.tar", "a") as target:
            target.addfile(info, data)
    code, text = _verify(out, capsys, "--json")
    assert code == 1
    report = json.loads(text)
    kinds = {p["kind"]: p for p in report["problems"]}
    assert set(kinds) == {"staged changed", "two shards"}
    assert kinds["staged changed"]["jobs"][0]["job_id"] == record["job_id"]
    assert kinds["two shards"]["jobs"][0]["key"] == other["key"]
    assert kinds["two shards"]["where"] == "00000.tar, 00001.tar"
    assert report["staged"] == 2


async def test_a_folder_a_run_holds_is_read_but_not_marked(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "webdataset")
    record = _record_of(out, "shards/00000.tar")
    _flip_member(out / "shards" / "00000.tar", record["files"][0]["path"].split("#")[1])
    ledger = (out / ".krea-batch" / "shards.jsonl").read_bytes()
    with OutputFolder(out):  # a live run's lock
        code, text = _verify(out, capsys)
    assert code == 2
    assert "a krea-batch run holds" in text
    assert "nothing was marked" in text
    assert record["key"] in text
    assert (out / ".krea-batch" / "shards.jsonl").read_bytes() == ledger


def test_what_is_no_krea_batch_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "is not a krea-batch output folder" in capsys.readouterr().err
    assert main(["verify", "memory://nothing/here", "--state-dir", str(tmp_path / "s")]) == 2
    assert "no state folder" in capsys.readouterr().err


async def test_garbage_on_disk_is_a_finding_never_a_traceback(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await _batch(emu, tmp_path, "webdataset")
    (out / ".krea-batch" / "shards.jsonl").write_bytes(b'\xff\xfe{"shard": 3}\n[1, 2]\n{"sh')
    results = out / "results.jsonl"
    outside = b'{"key": "k", "status": "completed", "files": [{"path": "../x"}]}\n\x00\n'
    _write_at(results, results.stat().st_size, outside)
    (out / "shards" / "00007.tar").write_bytes(b"not a tar at all")
    report = verify(str(out))
    states = {check.name: check.state for check in report.shards}
    assert states == {
        "00000.tar": "unknown",  # not in the ledger, every member as recorded
        "00001.tar": "unknown",
        "00002.tar": "unknown",
        "00007.tar": "stray",
    }
    assert [p.kind for p in report.problems] == ["not ours"]
    assert _ledger(out).damaged == {}, "a stray shard is never marked (a run would delete it)"
    assert _verify(out, capsys)[0] == 1


async def test_a_url_is_checked_from_its_state_folder_and_the_destination(
    emu: RunningEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.mkdir("/verify-bucket")
    url = "memory://verify-bucket/run"
    state = tmp_path / "state"
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(JOBS, format="webdataset", shard_size=2))
    kwargs: dict[str, Any] = {"api_base": emu.url, "token": "t", "options": FAST}
    try:
        await run_batch(manifest, url, state_dir=state, **kwargs)
        assert _verify(url, capsys, "--state-dir", str(state))[0] == 0
        record = _record_of(state, "shards/00001.tar")
        member = record["files"][0]["path"].split("#")[1]
        local = tmp_path / "00001.tar"
        memory.get_file("/verify-bucket/run/shards/00001.tar", str(local))
        _flip_member(local, member)
        memory.put_file(str(local), "/verify-bucket/run/shards/00001.tar")
        code, text = _verify(url, capsys, "--state-dir", str(state))
        assert code == 1
        assert f"{record['key']} (job id {record['job_id']})" in text
        assert set(_ledger(state).damaged) == {"00001.tar"}
        submits = emu.emulator.snapshot()["submits"]
        await run_batch(manifest, url, state_dir=state, **kwargs)
        assert emu.emulator.snapshot()["submits"] == submits
        assert _verify(url, capsys, "--state-dir", str(state))[0] == 0
    finally:
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
        memory.rm("/verify-bucket", recursive=True)
