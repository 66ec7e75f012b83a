"""Every wait and every byte has a limit: Retry-After, encoded bodies, stalled downloads."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import logging
import random
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from runner.api.bounds import Timeouts
from runner.api.client import KreaClient, retry_after_of
from runner.engine.retry import RetryPolicy, retrying
from runner.errors import TransientApiError
from tests.http_helpers import fake_server
from tests.virtual_time import VirtualClock, virtual_time

NOW = 1_800_000_000.0
DATE = "Fri, 15 Jan 2027 08:00:00 GMT"  # 1_800_000_000 s after the epoch


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        ("999999", 999999.0),
        ("inf", float("inf")),
        ("nan", None),
        ("-3", 0.0),
        ("soon", None),
        ("Fri, 15 Jan 2027 08:01:00 GMT", 60.0),  # an HTTP date, counted from the answer's
        ("Fri, 15 Jan 2027 07:00:00 GMT", 0.0),  # a date already past
    ],
)
def test_retry_after_reads_every_form_a_server_sends(header: str, seconds: float | None) -> None:
    assert retry_after_of(header, NOW) == seconds


@pytest.mark.parametrize("asked", [999999.0, float("inf")])
async def test_a_long_retry_after_is_clamped_and_the_servers_value_logged(
    asked: float, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    calls: list[float] = []

    async def throttled() -> str:
        calls.append(clock.now)
        if len(calls) == 1:
            raise TransientApiError("429", status=429, retry_after=asked)
        return "ok"

    async with virtual_time(clock):
        result = await retrying(
            throttled, RetryPolicy(max_retry_after=120.0), clock, random.Random(0)
        )
    assert result == "ok"
    assert calls[1] - calls[0] == pytest.approx(120.0)
    assert "waiting 120 s instead" in caplog.text


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_an_encoded_image_is_asked_for_plain_and_decoded_before_the_size_check(
    tmp_path: Path,
) -> None:
    asked: list[str] = []
    raw = png_bytes()

    async def gzipped(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Accept-Encoding", ""))
        body = gzip.compress(raw)
        headers = {"Content-Encoding": "gzip", "Content-Type": "image/png"}
        return web.Response(body=body, headers=headers)

    async with fake_server({("GET", "/img.png"): gzipped}) as url, KreaClient(url, "t") as client:
        got = await client.download(url + "/img.png", tmp_path / "img.part")
    assert asked == ["identity"]
    assert got.bytes == len(raw)
    assert got.data == raw  # held in memory: a small image needs no file


async def test_a_large_image_goes_to_its_file_and_the_writer_keeps_it_with_its_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SPILL bytes the body is streamed to the hidden file, not held; the writer then
    checks, embeds and places that file (the other route a small image never takes)."""
    from runner.api import downloads
    from runner.outputs import OutputFolder
    from runner.outputs.provenance import read as read_provenance
    from runner.outputs.writers import Fetched, open_writer

    raw = png_bytes()
    monkeypatch.setattr(downloads._SpoolFile, "SPILL", 64)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=raw, headers={"Content-Type": "image/png"})

    with OutputFolder(tmp_path / "out") as folder:
        writer = open_writer(folder)
        part = writer.partial_path("k")
        async with fake_server({("GET", "/i.png"): image}) as url, KreaClient(url, "t") as client:
            got = await client.download(url + "/i.png", part)
        assert got.data is None
        assert part.read_bytes() == raw
        fetched = Fetched(part, got.sha256, got.bytes, got.content_type, "u", got.data)
        entry = writer.place(fetched, "0000/k", {"prompt": "a fox"})
    placed = tmp_path / "out" / entry.path
    assert entry.path == "images/0000/k.png"
    assert read_provenance(placed) == {"prompt": "a fox"}
    assert not part.exists()


async def test_a_download_that_trickles_is_dropped_as_stalled(tmp_path: Path) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 10_000
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                await response.write(b"x")
                await asyncio.sleep(0.05)
        return response

    timeouts = Timeouts(stall=0.3)
    async with (
        fake_server({("GET", "/img.png"): trickle}) as url,
        KreaClient(url, "t", timeouts=timeouts) as client,
    ):
        with pytest.raises(TransientApiError, match="stalled"):
            await client.download(url + "/img.png", tmp_path / "img.part")
    assert not (tmp_path / "img.part").exists()


async def test_a_download_that_goes_silent_is_dropped_as_stalled(tmp_path: Path) -> None:
    silent = asyncio.Event()

    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b"x" * 5_000)
        await silent.wait()
        return response

    async with (
        fake_server({("GET", "/img.png"): half}) as url,
        KreaClient(url, "t", timeouts=Timeouts(stall=0.3)) as client,
    ):
        with pytest.raises(TransientApiError, match="stalled"):
            await client.download(url + "/img.png", tmp_path / "img.part")
        silent.set()


async def test_a_run_whose_images_trickle_ends_within_the_job_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole download, tries included, stays within --job-timeout: the job is kept for the
    next run, the run ends, and the stalls are logged."""
    from runner.batch import run_batch
    from runner.engine import EngineOptions
    from tests.engine_helpers import manifest_text

    caplog.set_level(logging.DEBUG, logger="runner")  # each retry is a -v line
    image = png_bytes()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(image)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the runner hangs up: as it should
            for byte in image:
                await response.write(bytes([byte]))
                await asyncio.sleep(0.2)
        return response

    jobs: dict[str, dict[str, object]] = {}

    async def submit(request: web.Request) -> web.Response:
        job_id = f"job-{len(jobs)}"
        jobs[job_id] = {"job_id": job_id, "status": "queued", "created_at": "2027-01-15T08:00:00Z"}
        return web.json_response(jobs[job_id])

    async def get_job(request: web.Request) -> web.Response:
        job = jobs[request.match_info["id"]]
        base = f"http://{request.host}"
        return web.json_response(
            {**job, "status": "completed", "result": {"urls": [base + "/img.png"]}}
        )

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"items": []})

    routes = {
        ("POST", "/generate/image/bytedance/seedream-4"): submit,
        ("GET", "/jobs/{id}"): get_job,
        ("GET", "/jobs"): listing,
        ("GET", "/img.png"): trickle,
    }
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(1, poll_interval=0.05, job_timeout="2s", poll_mode="job"))
    options = EngineOptions(download_stall=0.5, handle_signals=False)
    async with fake_server(routes) as url:
        result = await asyncio.wait_for(
            run_batch(manifest, tmp_path / "out", api_base=url, token="t", options=options),
            timeout=20,
        )
    assert result.counts.deferred == 1  # paid for: kept for the next run, not failed
    assert "stalled" in caplog.text
