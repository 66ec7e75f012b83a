"""A corpus of malformed answers: the client raises only our errors, and a run ends every job
with a reason (or keeps it for the next run), never with a traceback."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import run_batch
from runner.api.bounds import Limits
from runner.api.client import KreaClient
from runner.api.remote import ListedJob, MalformedJob, RemoteJob
from runner.errors import RunnerError
from tests.engine_helpers import FAST, read_results, small_manifest
from tests.http_helpers import fake_server

SEEDREAM = "/generate/image/bytedance/seedream-4"
BODY = {"prompt": "a fox", "width": 256, "height": 256}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
job_like = st.fixed_dictionaries(
    {},
    optional={
        "job_id": st.sampled_from(["3f1c0a52-6a8e", "", "../x", 7, None]),
        "status": st.sampled_from(["queued", "completed", "failed", "weird", 3]),
        "created_at": st.sampled_from(["2026-11-24T10:00:00Z", "yesterday", 5]),
        "result": json_values,
        "error": json_values,
    },
)


@given(st.one_of(json_values, job_like))
@settings(max_examples=300)
def test_job_json_of_any_shape_is_parsed_or_refused_as_malformed(data: Any) -> None:
    for parse in (RemoteJob.from_json, RemoteJob.from_submit_answer, ListedJob.from_json):
        with contextlib.suppress(MalformedJob):
            parse(data)


answers = st.tuples(
    st.sampled_from([200, 201, 400, 401, 402, 404, 410, 422, 429, 500, 502, 504]),
    st.one_of(
        st.binary(max_size=64),
        st.one_of(json_values, job_like).map(lambda v: json.dumps(v).encode()),
        st.text(max_size=40).map(lambda t: t.encode("utf-8")),
        st.just("<h1>Échec</h1>".encode("latin-1")),
    ),
    st.sampled_from(["application/json", "text/html; charset=latin-1", "", "image/png"]),
)


@given(st.lists(answers, min_size=1, max_size=12))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_client_lets_no_foreign_exception_out(corpus: list[tuple[int, bytes, str]]) -> None:
    async def check() -> None:
        queue = list(corpus)

        async def answer(request: web.Request) -> web.Response:
            status, body, content_type = queue.pop(0) if queue else (500, b"", "")
            headers = {"Content-Type": content_type} if content_type else {}
            return web.Response(status=status, body=body, headers=headers)

        routes = {
            ("POST", SEEDREAM): answer,
            ("GET", "/jobs/{id}"): answer,
            ("GET", "/jobs"): answer,
            ("DELETE", "/jobs/{id}"): answer,
        }
        async with (
            fake_server(routes) as url,
            KreaClient(url, "t", limits=Limits(answer_bytes=4096)) as client,
        ):
            calls = [
                lambda: client.submit(SEEDREAM, BODY),
                lambda: client.get_job("3f1c0a52-6a8e"),
                lambda: client.list_jobs(10),
                lambda: client.cancel("3f1c0a52-6a8e"),
            ]
            for index in range(len(corpus)):
                with contextlib.suppress(RunnerError):  # ours: fails a job, never the run
                    await calls[index % len(calls)]()

    anyio.run(check)


def tiny_krea(job_answers: list[tuple[int, Any]]) -> dict[Any, Any]:
    """A Krea whose n-th job answers GET /jobs/job-n with ``job_answers[n]``."""
    created = "2026-11-24T10:00:00.000Z"
    counter = iter(range(1000))

    async def submit(request: web.Request) -> web.Response:
        return web.json_response(
            {"job_id": f"job-{next(counter)}", "status": "queued", "created_at": created}
        )

    async def job(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["id"].removeprefix("job-"))
        status, body = job_answers[n % len(job_answers)]
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, content_type="text/html")
        base = f"{request.scheme}://{request.host}"
        text = json.dumps(body).replace("JOB", request.match_info["id"]).replace("BASE", base)
        return web.Response(status=status, text=text, content_type="application/json")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="image/png")

    return {
        ("POST", SEEDREAM): submit,
        ("GET", "/jobs/{id}"): job,
        ("GET", "/files/page.png"): page,
    }


CORPUS: list[tuple[int, Any]] = [
    (200, {"job_id": "JOB", "status": "completed", "result": {"urls": "not-a-list"}}),
    (200, {"job_id": "JOB", "status": "exploded"}),
    (200, {"job_id": "JOB", "status": "completed", "result": {}}),
    (200, {"job_id": "JOB", "status": "failed", "error": {"message": "moderation"}}),
    (502, "<h1>Échec de la passerelle</h1>".encode("latin-1")),
    (200, b"\xff\xfe\x00garbage"),
    (404, {"error": "Job not found"}),
    (200, {"job_id": "someone-else", "status": "completed", "result": {"urls": []}}),
    (200, {"job_id": "JOB", "status": "completed", "result": {"urls": ["BASE/files/page.png"]}}),
]


@pytest.mark.timeout(120)
async def test_a_run_on_malformed_answers_ends_each_job_with_a_reason(tmp_path: Path) -> None:
    manifest = small_manifest(len(CORPUS), job_timeout=0.5, concurrency=len(CORPUS), max_attempts=1)
    async with fake_server(tiny_krea(CORPUS)) as url:
        result = await run_batch(manifest, tmp_path, api_base=url, token="t", options=FAST)
    counts = result.counts
    records = read_results(tmp_path)
    assert counts.completed == 0
    assert counts.failed + counts.deferred == len(CORPUS)
    assert all(r["status"] == "failed" and r["error"] for r in records)
    reasons = " | ".join(r["error"] for r in records)
    for expected in ("without any result URL", "moderation", "gone", "not an image"):
        assert expected in reasons
    assert result.exit_code == 1


async def test_a_job_gone_while_refreshing_its_expired_url_is_kept_for_later(
    tmp_path: Path,
) -> None:
    polls = 0

    async def submit(request: web.Request) -> web.Response:
        return web.json_response({"job_id": "job-0", "status": "queued"})

    async def job(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        if polls > 1:
            return web.json_response({"error": "Job not found"}, status=404)
        url = f"{request.scheme}://{request.host}/files/expired.png"
        return web.json_response(
            {"job_id": "job-0", "status": "completed", "result": {"urls": [url]}}
        )

    async def expired(request: web.Request) -> web.Response:
        return web.json_response({"error": "Request has expired"}, status=403)

    routes = {
        ("POST", SEEDREAM): submit,
        ("GET", "/jobs/job-0"): job,
        ("GET", "/files/expired.png"): expired,
    }
    async with fake_server(routes) as url:
        result = await run_batch(small_manifest(1), tmp_path, api_base=url, token="t", options=FAST)
    assert result.counts.deferred == 1
    assert result.exit_code == 1
