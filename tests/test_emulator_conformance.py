"""Every emulator answer matches the response schemas of Krea's published OpenAPI spec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from runner.catalog import Catalog
from runner.manifest import expand, parse_manifest
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


def _sample(prop: dict[str, Any]) -> Any:
    """A valid value of one field of the old spec."""
    if "enum" in prop:
        return next(v for v in prop["enum"] if v is not None)
    if "default" in prop:
        return prop["default"]
    if prop.get("type") in ("number", "integer"):
        return prop.get("minimum", 1)
    return None


def test_bodies_of_old_spec_manifests_still_pass_the_old_spec(
    openapi_spec: dict[str, Any], catalog: Catalog
) -> None:
    """A manifest written for the spec copy's models sends bodies that spec accepts, but for
    the renames the overlay documents (Flux's guidance_scale), mapped back here."""
    for path, item in openapi_spec["paths"].items():
        if not path.startswith("/generate/image/"):
            continue
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        model = catalog.by_endpoint(path)
        assert model is not None
        old_names = {
            new: old for old, new in model.renamed_fields.items() if old in schema["properties"]
        }
        params = {}
        required = minimal_body(model)
        for name, prop in schema["properties"].items():
            value = required.get(name, _sample(prop))
            if name != "prompt" and (name in schema.get("required", []) or value is not None):
                params[model.renamed_fields.get(name, name)] = value
        params.pop("seed", None)
        manifest = parse_manifest(
            json.dumps(
                {
                    "version": 1,
                    "jobs": [{"prompt": "a lighthouse", "model": model.id, "params": params}],
                }
            )
        )
        (spec,) = expand(manifest)
        body = {old_names.get(name, name): value for name, value in spec.body.items()}
        Draft202012Validator(schema).validate(body)
