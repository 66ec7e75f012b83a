"""Hostile answers and flags: each fails one job, or is refused, never with a traceback."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from runner.api.addresses import PrivateAddress, PublicOnlyResolver
from runner.api.bounds import Limits
from runner.api.client import KreaClient
from runner.api.remote import JobStatus, MalformedJob, RemoteJob
from runner.cli import main
from runner.engine.latency import TrackSettings
from runner.engine.outcome import Failed
from runner.engine.tracker import Tracker
from runner.errors import AmbiguousSubmit, PermanentApiError, TransientApiError
from runner.outputs import OutputFolder, image_problem
from runner.outputs.metadata import metadata_rows
from tests.api_stub import ApiStub
from tests.engine_helpers import as_records
from tests.http_helpers import fake_server
from tests.virtual_time import VirtualClock, virtual_time

FLUX = "/generate/image/bfl/flux-1-dev"
BODY = {"prompt": "a fox", "width": 512, "height": 512}


@pytest.mark.parametrize(
    "flag", [["--token", "SECRET-123"], ["--token=SECRET-123"], ["--api-key", "SECRET-123"]]
)
def test_a_secret_on_the_command_line_is_refused_without_echoing_it(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "jobs.yaml", *flag]) == 2
    err = capsys.readouterr().err
    assert "SECRET-123" not in err
    assert "KREA_API_TOKEN" in err


def test_flags_are_never_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "jobs.yaml", "--token-f", "secret-file"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown flag --token-f (did you mean --token-file?)" in err
    assert "secret-file" not in err


def test_a_mistyped_flag_is_named_first_with_the_one_meant_then_a_line_of_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "jobs.yaml", "--concurency", "4"])
    assert exit_info.value.code == 2
    first, usage = capsys.readouterr().err.splitlines()  # not 20 lines of usage before it
    assert first == "krea-batch run: error: unknown flag --concurency (did you mean --concurrency?)"
    assert usage == "usage: krea-batch run MANIFEST [flags]; `krea-batch run --help` lists them"


@pytest.mark.parametrize("words", [["--tok", "SECRET-123"], ["--tk=SECRET-123"]])
def test_an_unknown_flag_is_named_but_its_value_never_echoed(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "jobs.yaml", *words])
    err = capsys.readouterr().err
    assert "SECRET-123" not in err
    assert words[0].split("=")[0] in err


async def test_an_error_page_in_latin_1_is_an_api_error_not_a_crash() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            status=502,
            body="<h1>Échec de la passerelle</h1>".encode("latin-1"),
            content_type="text/html",
            charset="latin-1",
        )

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(body="réponse".encode("latin-1"), content_type="text/plain")

    routes = {("GET", "/jobs/abc"): page, ("POST", FLUX): not_json}
    async with fake_server(routes) as url, KreaClient(url, "t") as client:
        with pytest.raises(TransientApiError, match="502"):
            await client.get_job("abc")
        with pytest.raises(AmbiguousSubmit):
            await client.submit(FLUX, BODY)


async def test_an_image_url_no_library_can_use_is_a_permanent_error(tmp_path: Path) -> None:
    url = f"https://{'x' * 64}.example.com/image.png"
    async with KreaClient("http://127.0.0.1:9", "t") as client:
        with pytest.raises(PermanentApiError, match="unusable URL"):
            await client.download(url, tmp_path / "image.part")


@pytest.mark.parametrize("job_id", ["../_evil/x", "a?b", "", "x" * 200])
def test_job_ids_must_look_like_ids(job_id: str) -> None:
    with pytest.raises(MalformedJob):
        RemoteJob.from_json({"job_id": job_id, "status": "queued"})


async def test_a_post_answer_with_a_strange_job_id_is_not_trusted() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"job_id": "../../x", "status": "queued"})

    async with fake_server({("POST", FLUX): answer}) as url, KreaClient(url, "t") as client:
        with pytest.raises(AmbiguousSubmit) as caught:
            await client.submit(FLUX, BODY)
    assert caught.value.created  # answered 2xx: a job exists, found later by the listing


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_an_image_whose_header_claims_a_bomb_still_gets_metadata(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bomb.png").write_bytes(png_header(40000, 40000))
    record = {
        "status": "completed",
        "key": "k",
        "prompt": "p",
        "model": "flux-1-dev",
        "params": {"width": 512, "height": 512},
        "files": [{"path": "images/bomb.png"}],
    }
    [row] = metadata_rows(tmp_path, as_records([record]))
    assert (row["width"], row["height"]) == (512, 512)


class _StuckJob(ApiStub):
    """A job that never ends, on a server that will not cancel it."""

    async def get_job(self, job_id: str) -> RemoteJob:
        return RemoteJob(job_id, JobStatus.PROCESSING, None, None, (), None)

    async def cancel(self, job_id: str) -> None:
        raise TransientApiError("DELETE: 503")


async def test_a_timed_out_job_that_cannot_be_cancelled_is_not_recorded_cancelled(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    folder = OutputFolder(tmp_path)
    settings = TrackSettings(poll_interval=2.0, job_timeout=10.0)
    async with virtual_time(clock):
        tracker = Tracker(
            _StuckJob(),
            folder,
            clock,
            settings,
            note=lambda event: None,
            rng=random.Random(0),
        )
        outcome = await tracker.wait("job-1")
    assert isinstance(outcome, Failed)
    assert "timed out" in outcome.reason
    assert "could not be cancelled" in outcome.reason


async def test_an_image_declaring_or_streaming_past_the_cap_is_refused(tmp_path: Path) -> None:
    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000, content_type="image/png")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 1000)
        return response

    routes = {("GET", "/declared.png"): declared, ("GET", "/endless.png"): endless}
    async with (
        fake_server(routes) as url,
        KreaClient(url, "t", limits=Limits(image_bytes=4000)) as client,
    ):
        with pytest.raises(PermanentApiError, match="declares 5,000 bytes"):
            await client.download(url + "/declared.png", tmp_path / "a.part")
        with pytest.raises(PermanentApiError, match="past the limit"):
            await client.download(url + "/endless.png", tmp_path / "b.part")
    assert not os.listdir(tmp_path)  # nothing half-written stays


async def test_a_json_answer_past_the_cap_is_unusable_not_read_whole() -> None:
    async def huge(request: web.Request) -> web.Response:
        return web.json_response({"job_id": "abc", "status": "queued", "pad": "x" * 5000})

    async with (
        fake_server({("GET", "/jobs/abc"): huge}) as url,
        KreaClient(url, "t", limits=Limits(answer_bytes=1000)) as client,
    ):
        with pytest.raises(TransientApiError, match="over 1000 bytes"):
            await client.get_job("abc")


async def test_downloads_go_to_public_addresses_only_when_the_api_is_public(
    tmp_path: Path,
) -> None:
    async with KreaClient("https://api.krea.ai", "t") as client:
        for url in ("http://127.0.0.1:9/a.png", "http://169.254.169.254/latest", "ftp://a/b.png"):
            with pytest.raises(PermanentApiError):
                await client.download(url, tmp_path / "x.part")
    with pytest.raises(PrivateAddress):
        await PublicOnlyResolver().resolve("localhost", 80)


async def test_redirects_are_followed_hop_by_hop_and_checked(tmp_path: Path) -> None:
    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/image.png")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png_header(1, 1), content_type="image/png")

    routes = {("GET", "/hop"): hop, ("GET", "/away"): away, ("GET", "/image.png"): image}
    async with fake_server(routes) as url, KreaClient(url, "t") as client:
        got = await client.download(url + "/hop", tmp_path / "ok.part")
        assert got.bytes == len(png_header(1, 1))
        with pytest.raises(PermanentApiError, match="http"):
            await client.download(url + "/away", tmp_path / "no.part")


def test_what_is_not_an_image_is_said_so(tmp_path: Path) -> None:
    page = tmp_path / "page.png"
    page.write_bytes(b"<!doctype html><title>Login</title>")
    assert "not an image" in (image_problem(page) or "")
    real = tmp_path / "real.png"
    Image.new("RGB", (8, 8)).save(real)
    assert image_problem(real) is None
