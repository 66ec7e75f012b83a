"""Hostile folders, names and manifests: refused before anything is sent, or never paid twice."""

from __future__ import annotations

import errno
import json
import os
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runner import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency
from runner.errors import ManifestError, UsageError
from runner.manifest import load_manifest, parse_manifest
from runner.outputs import OutputFolder, latest_records
from runner.outputs.merge import merge_folders
from runner.state.journal import Journal
from tests.engine_helpers import FAST, check_folder, read_results, small_manifest
from tests.http_helpers import fake_server
from tests.in_process import in_process

QUICK = Latency.parse("fixed:0.05")


def named_manifest(template: str, prompts: list[str]) -> str:
    return textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: "{{p}}"
            vars: {{p: {json.dumps(prompts)}}}
            model: seedream-4
            sizes: [128x128]
        run: {{name_template: "{template}", poll_interval: 0.02, lost_answer_wait: 10ms}}
    """)


async def test_a_name_that_is_another_jobs_second_image_is_refused_before_submitting(
    tmp_path: Path,
) -> None:
    manifest = parse_manifest(named_manifest("{prompt}", ["cat", "cat-1"]))
    async with in_process(EmulatorConfig(latency=QUICK, images_per_job=2)) as emu:
        with pytest.raises(UsageError, match="cat-1"):
            await run_batch(manifest, tmp_path, **emu.via, token="t", options=FAST)
        assert emu.emulator.stats["submits"] == 0


async def test_a_name_too_long_for_the_file_system_is_refused_before_submitting(
    tmp_path: Path,
) -> None:
    template = "/".join(["{prompt}"] * 80)  # eighty 60-character segments: over PATH_MAX
    manifest = parse_manifest(named_manifest(template, ["p" * 70]))
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        with pytest.raises(UsageError, match="too long"):
            await run_batch(manifest, tmp_path, **emu.via, token="t", options=FAST)
        assert emu.emulator.stats["submits"] == 0


async def test_a_folder_without_its_journal_is_rebuilt_from_results_not_paid_again(
    tmp_path: Path,
) -> None:
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        await run_batch(small_manifest(10), tmp_path, **emu.via, token="t", options=FAST)
        (tmp_path / ".krea-batch" / "journal.jsonl").unlink()
        first = read_results(tmp_path)
        broken = tmp_path / first[0]["files"][0]["path"]
        broken.write_bytes(b"not the image")  # this one must be fetched (and paid) again
        again = await run_batch(small_manifest(10), tmp_path, **emu.via, token="t", options=FAST)
        assert emu.emulator.stats["submits"] == 11  # only the job whose image was broken
    assert {r["status"] for r in read_results(tmp_path)} == {"completed"}
    assert len(read_results(tmp_path)) == 10
    assert again.counts.skipped == 9
    assert again.counts.completed == 1


def test_report_and_merge_skip_a_results_line_that_is_not_utf_8(tmp_path: Path) -> None:
    record = {"key": "k1", "status": "failed", "files": [], "error": "x", "prompt": "p"}
    (tmp_path / "results.jsonl").write_bytes(
        json.dumps(record).encode() + b"\n\xff\xfe not json \xe9\n"
    )
    assert [r.key for r in latest_records(tmp_path / "results.jsonl")] == ["k1"]
    assert main(["report", str(tmp_path)]) == 0


def test_report_is_written_over_a_summary_that_is_not_json(tmp_path: Path) -> None:
    record = {"key": "k1", "status": "failed", "files": [], "error": "x", "prompt": "p"}
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "summary.json").write_text('{"manifest": "cut sho')
    assert main(["report", str(tmp_path)]) == 0
    assert "cut sho" not in (tmp_path / "report.html").read_text()


def test_merge_refuses_a_shard_whose_results_point_outside_it(tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    shard.mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "evil.png").write_bytes(b"\x89PNG")
    record = {
        "key": "k1",
        "status": "completed",
        "prompt": "p",
        "files": [{"path": "../x/evil.png", "sha256": "0", "bytes": 4}],
    }
    (shard / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(UsageError, match="outside its folder"):
        merge_folders([shard], tmp_path / "o" / "merged")
    assert not (tmp_path / "o" / "x").exists()


def test_pixel_sizes_must_be_whole_numbers(write_manifest: Callable[[str], Path]) -> None:
    path = write_manifest(
        "version: 1\njobs:\n  - prompt: a cat\n    model: flux-1-dev\n"
        "    params: {width: 1024.5, height: 512}\n"
    )
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.params\.width: 1024.5 is not of type"):
        load_manifest(path)


def fake_krea(image: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> dict[Any, Any]:
    """Routes of a tiny Krea: every POST creates job-1, done at once, its image from ``image``."""
    created = "2026-11-24T10:00:00.000Z"

    async def submit(request: web.Request) -> web.Response:
        return web.json_response({"job_id": "job-1", "status": "queued", "created_at": created})

    async def job(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "job_id": "job-1",
                "status": "completed",
                "created_at": created,
                "completed_at": created,
                "result": {"urls": [f"{base}/files/1.png"]},
            }
        )

    return {
        ("POST", "/generate/image/bytedance/seedream-4"): submit,
        ("GET", "/jobs/job-1"): job,
        ("GET", "/files/1.png"): image,
    }


async def test_an_html_page_served_as_the_image_fails_the_job_after_a_second_try(
    tmp_path: Path,
) -> None:
    served = 0

    async def login_page(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        return web.Response(text="<!doctype html><h1>Sign in</h1>", content_type="image/png")

    async with fake_server(fake_krea(login_page)) as url:
        result = await run_batch(small_manifest(1), tmp_path, api_base=url, token="t", options=FAST)
    [record] = read_results(tmp_path)
    assert record["status"] == "failed"
    assert "not an image" in record["error"]
    assert served == 2
    assert result.exit_code == 1
    assert not [p for p in (tmp_path / "images").rglob("*") if p.is_file()]


async def test_the_finishing_stage_cannot_lose_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("runner.finishing.write_report", broken)
    monkeypatch.setattr(OutputFolder, "write_metadata", broken)
    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        result = await run_batch(small_manifest(2), tmp_path, **emu.via, token="t", options=FAST)
    assert result.exit_code == 0
    assert json.loads((tmp_path / "summary.json").read_text())["counts"]["completed"] == 2
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def read_only(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "lock":
            raise OSError(30, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(UsageError, match="Read-only file system"), OutputFolder(tmp_path):
        pass


async def test_a_job_whose_answers_are_never_a_job_ends_at_its_timeout(tmp_path: Path) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.json_response({"job_id": "job-1", "status": "completed", "result": {"urls": 7}})

    async def unused(request: web.Request) -> web.Response:
        return web.Response(status=404)

    routes = fake_krea(unused)
    routes[("GET", "/jobs/job-1")] = garbage
    async with fake_server(routes) as url:
        result = await run_batch(
            small_manifest(1, job_timeout=0.3), tmp_path, api_base=url, token="t", options=FAST
        )
    assert result.counts.deferred == 1  # paid for, perhaps done: the next run asks again
    assert result.exit_code == 1


async def test_a_full_disk_stops_the_run_at_once_with_exit_3_and_the_next_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = Journal._write
    writes = 0

    def filling(self: Journal, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    async with in_process(EmulatorConfig(latency=QUICK)) as emu:
        with monkeypatch.context() as patch:
            patch.setattr(Journal, "_write", filling)
            first = await run_batch(
                small_manifest(12), tmp_path, **emu.via, token="t", options=FAST
            )
        assert first.exit_code == 3
        assert "No space left on device" in (first.stopped or "")
        assert "free" in (first.stopped or "")
        assert first.counts.completed < 12
        again = await run_batch(small_manifest(12), tmp_path, **emu.via, token="t", options=FAST)
        assert again.exit_code == 0
        check_folder(tmp_path, 12, emu.emulator)
        assert emu.emulator.stats["submits"] == 12
