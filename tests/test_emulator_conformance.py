"""Every emulator answer matches the response schemas of Krea's published OpenAPI spec."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from runner.catalog import Catalog
from tests.emulator_helpers import FLUX, Harness, harness, minimal_body

BODY = {"prompt": "a red fox", "width": 512, "height": 512, "seed": 7}


def check(spec: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    responses = spec["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(body)


async def answer(h: Harness, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with h.session.request(method, h.url + url, **kwargs) as response:
        return response.status, await response.json()


async def test_submit_and_every_status_of_get_job_conform(
    openapi_spec: dict[str, Any], catalog: Catalog
) -> None:
    async with harness(failure_rate=0.5, seed=3) as h:
        for model in catalog:
            if model.verified:
                status, body = await answer(h, "POST", model.endpoint, json=minimal_body(model))
                check(openapi_spec, model.endpoint, "post", status, body)
        status, created = await answer(h, "POST", FLUX, json=BODY)
        seen = set()
        for _ in range(12):
            status, job = await answer(h, "GET", f"/jobs/{created['job_id']}")
            check(openapi_spec, "/jobs/{id}", "get", status, job)
            seen.add(job["status"])
            h.clock.advance(1)
        assert {"queued", "sampling", "intermediate-complete"} <= seen
        status, listing = await answer(h, "GET", "/jobs", params={"limit": "50"})
        check(openapi_spec, "/jobs", "get", status, listing)
        assert {j["status"] for j in listing["items"]} >= {"completed", "failed"}


async def test_error_answers_conform(openapi_spec: dict[str, Any]) -> None:
    async with harness(concurrency_limit=1, credits=4.0) as h:
        check(openapi_spec, FLUX, "post", *await answer(h, "POST", FLUX, json={"prompt": 3}))
        await answer(h, "POST", FLUX, json=BODY)
        check(openapi_spec, FLUX, "post", *await answer(h, "POST", FLUX, json=BODY))  # 429
        h.clock.advance(10)
        check(openapi_spec, FLUX, "post", *await answer(h, "POST", FLUX, json=BODY))  # 402
        missing = "/jobs/00000000-0000-4000-8000-000000000000"
        check(openapi_spec, "/jobs/{id}", "get", *await answer(h, "GET", missing))
        check(openapi_spec, "/jobs", "get", *await answer(h, "GET", "/jobs?limit=0"))
    async with harness(client_token="bad", token="good") as h:
        check(openapi_spec, FLUX, "post", *await answer(h, "POST", FLUX, json=BODY))


@pytest.mark.parametrize("status", [400, 401, 402, 429])
def test_the_spec_documents_the_errors_we_emulate(
    openapi_spec: dict[str, Any], status: int
) -> None:
    assert str(status) in openapi_spec["paths"][FLUX]["post"]["responses"]
