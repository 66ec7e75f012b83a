"""The client against small fake servers: did a request reach the server, and answers as Krea
sends them."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from runner.api.bounds import Timeouts
from runner.api.client import KreaClient
from runner.api.remote import JobStatus, MalformedJob, RemoteJob
from runner.errors import AmbiguousSubmit, PermanentApiError, TransientApiError
from tests.http_helpers import fake_server

FLUX = "/generate/image/bfl/flux-1-dev"
BODY = {"prompt": "a fox", "width": 512, "height": 512}
JOB = "3f1c0a52-6a8e-4a59-9d1b-0c7c5d3a9e01"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_post_that_cannot_connect_is_known_never_to_have_left() -> None:
    async with KreaClient(f"http://127.0.0.1:{closed_port()}", "t") as client:
        with pytest.raises(TransientApiError) as caught:
            await client.submit(FLUX, BODY)
    assert not isinstance(caught.value, AmbiguousSubmit)


async def test_a_post_without_an_answer_in_time_may_have_created_a_job() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async with (
        fake_server({("POST", FLUX): slow}) as url,
        KreaClient(url, "t", timeouts=Timeouts(api=0.2)) as client,
    ):
        with pytest.raises(AmbiguousSubmit) as caught:
            await client.submit(FLUX, BODY)
    assert not caught.value.created


async def test_a_2xx_answer_that_cannot_be_read_surely_created_a_job() -> None:
    async def garbled(request: web.Request) -> web.Response:
        return web.Response(text='{"job_id": "3f1c', content_type="application/json")

    async with fake_server({("POST", FLUX): garbled}) as url, KreaClient(url, "t") as client:
        with pytest.raises(AmbiguousSubmit) as caught:
            await client.submit(FLUX, BODY)
    assert caught.value.created


async def test_a_post_answer_without_status_is_a_queued_job() -> None:
    async def answer(request: web.Request) -> web.Response:
        # Krea's current GPT Image 2 example: no status in the POST answer.
        return web.json_response(
            {"job_id": JOB, "created_at": "2026-11-24T10:00:00.000Z", "completed_at": None}
        )

    async with fake_server({("POST", FLUX): answer}) as url, KreaClient(url, "t") as client:
        job = await client.submit(FLUX, BODY)
    assert (job.job_id, job.status) == (JOB, JobStatus.QUEUED)


async def test_the_listing_keeps_jobs_of_unknown_status_and_reads_either_cursor_name() -> None:
    async def listing(request: web.Request) -> web.Response:
        items = [
            {"job_id": JOB, "status": "upscaling", "created_at": "2026-11-24T10:00:01.000Z"},
            {"job_id": "other", "status": "completed", "created_at": "2026-11-24T10:00:00.000Z"},
            {"status": "queued"},  # no id: nothing could claim it
        ]
        return web.json_response({"items": items, "nextCursor": "2026-11-24T10:00:00.000Z"})

    async with fake_server({("GET", "/jobs"): listing}) as url, KreaClient(url, "t") as client:
        jobs, cursor = await client.list_jobs(100)
    assert [(j.job_id, j.status) for j in jobs] == [(JOB, "upscaling"), ("other", "completed")]
    assert cursor == "2026-11-24T10:00:00.000Z"


async def test_a_422_is_a_refusal_like_a_400_and_created_nothing() -> None:
    async def invalid(request: web.Request) -> web.Response:
        return web.json_response({"error": "Invalid asset URL"}, status=422)

    async with fake_server({("POST", FLUX): invalid}) as url, KreaClient(url, "t") as client:
        with pytest.raises(PermanentApiError, match="422 Invalid asset URL") as caught:
            await client.submit(FLUX, BODY)
    assert not isinstance(caught.value, AmbiguousSubmit)


@pytest.mark.parametrize(
    "urls",
    [
        ["https://cdn/a.png", "https://cdn/b.png"],
        [
            {"type": "image", "url": "https://cdn/a.png"},
            {"type": "image", "url": "https://cdn/b.png"},
        ],
        {"first": "https://cdn/a.png", "second": {"url": "https://cdn/b.png"}},
    ],
)
def test_result_urls_are_read_in_every_shape_krea_has_shown(urls: object) -> None:
    job = RemoteJob.from_json({"job_id": JOB, "status": "completed", "result": {"urls": urls}})
    assert job.urls == ("https://cdn/a.png", "https://cdn/b.png")


@pytest.mark.parametrize("urls", ["https://cdn/a.png", [{"type": "image"}], [3], {"a": None}])
def test_result_urls_that_hold_no_url_are_malformed(urls: object) -> None:
    with pytest.raises(MalformedJob):
        RemoteJob.from_json({"job_id": JOB, "status": "completed", "result": {"urls": urls}})
