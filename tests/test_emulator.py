"""The emulator: the Krea API's flow, lifecycle, validation, listing and every knob."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from runner.api.remote import parse_time
from runner.catalog import Catalog
from runner.emulator import run_emulator
from runner.emulator.config import EmulatorConfig, Latency
from tests.emulator_helpers import FLUX, harness, minimal_body
from tests.http_helpers import receiver

BODY = {"prompt": "a red fox", "width": 512, "height": 512, "seed": 7}


async def test_the_docs_curl_flow_submit_poll_download() -> None:
    async with harness() as h:
        created = await h.submit_ok(BODY)
        assert created["status"] == "queued"
        assert created["completed_at"] is None
        assert created["result"] is None
        h.clock.advance(10)
        job = await h.job(created["job_id"])
        assert job["status"] == "completed"
        assert job["completed_at"] > job["created_at"]
        async with h.session.get(job["result"]["urls"][0]) as response:
            assert response.content_type == "image/png"
            image = Image.open(io.BytesIO(await response.read()))
            assert image.size == (512, 512)


async def test_statuses_follow_the_lifecycle_with_a_preview_before_the_end() -> None:
    async with harness() as h:
        job_id = (await h.submit_ok(BODY))["job_id"]
        seen = []
        for _ in range(11):
            job = await h.job(job_id)
            seen.append(job["status"])
            if job["status"] == "intermediate-complete":
                assert job["result"]["urls"][0].endswith("preview.jpg")
            h.clock.advance(1)
        assert list(dict.fromkeys(seen)) == [
            "queued",
            "scheduled",
            "processing",
            "sampling",
            "intermediate-complete",
            "completed",
        ]
        assert "completed_at" in job


async def test_images_are_deterministic_from_prompt_and_seed_and_sized_by_aspect_ratio() -> None:
    async with harness() as h:
        bodies = [BODY, BODY, {**BODY, "seed": 8}]
        ids = [(await h.submit_ok(b))["job_id"] for b in bodies]
        nano = await h.submit_ok(
            {"prompt": "a cat", "aspect_ratio": "16:9", "resolution": "2K"},
            "/generate/image/google/nano-banana-pro",
        )
        h.clock.advance(10)
        images = []
        for job_id in [*ids, nano["job_id"]]:
            url = (await h.job(job_id))["result"]["urls"][0]
            async with h.session.get(url) as response:
                images.append(await response.read())
        assert images[0] == images[1]
        assert images[0] != images[2]
        assert Image.open(io.BytesIO(images[3])).size == (2048, 1152)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": "x", "width": 4000}, "width: 4000 is above the maximum 2368"),
        ({"prompt": "x", "quality": "high"}, "does not take 'quality'"),
        ({"prompt": "x", "imageUrl": "https://a/b.png"}, "'imageUrl' was renamed to 'image_url'"),
        ({"width": 512}, "requires 'prompt'"),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(body: dict[str, Any], words: str) -> None:
    async with harness() as h, await h.submit(body) as response:
        assert response.status == 400
        assert words in (await response.json())["error"]


async def test_every_catalog_model_accepts_its_minimal_body(catalog: Catalog) -> None:
    async with harness() as h:
        for model in catalog:
            created = await h.submit_ok(minimal_body(model), model.endpoint)
            assert created["status"] == "queued", model.id


async def test_unknown_endpoint_and_unknown_job_are_404() -> None:
    async with harness() as h:
        async with await h.submit(BODY, "/generate/image/acme/nothing") as response:
            assert response.status == 404
        async with h.session.get(h.url + "/jobs/00000000-0000-4000-8000-000000000000") as response:
            assert response.status == 404
            assert "error" in await response.json()


async def test_a_bearer_token_is_required_and_can_be_pinned() -> None:
    async with harness(client_token="wrong", token="right") as h, await h.submit(BODY) as response:
        assert response.status == 401
    async with harness(client_token="right", token="right") as h:
        await h.submit_ok(BODY)
        async with aiohttp.ClientSession() as anonymous, anonymous.get(h.url + "/jobs") as response:
            assert response.status == 401


async def test_list_is_newest_first_with_cursor_and_status_filter() -> None:
    async with harness() as h:
        ids = []
        for seed in range(5):
            ids.append((await h.submit_ok({**BODY, "seed": seed}))["job_id"])
            h.clock.advance(1)
        async with h.session.get(h.url + "/jobs", params={"limit": "2"}) as response:
            page = await response.json()
        assert [j["job_id"] for j in page["items"]] == ids[::-1][:2]
        async with h.session.get(
            h.url + "/jobs", params={"limit": "10", "cursor": page["next_cursor"]}
        ) as response:
            rest = await response.json()
        assert [j["job_id"] for j in rest["items"]] == ids[::-1][2:]
        assert rest["next_cursor"] is None
        h.clock.advance(5)  # the first job has now run its 10 s
        async with h.session.get(h.url + "/jobs", params={"status": "completed"}) as response:
            done = await response.json()
        assert [j["job_id"] for j in done["items"]] == ids[:1]
        async with h.session.get(h.url + "/jobs", params={"limit": "5000"}) as response:
            assert response.status == 400


async def test_cancel_stops_a_job_and_it_is_not_billed() -> None:
    async with harness(credits=3.0) as h:
        job_id = (await h.submit_ok(BODY))["job_id"]
        async with h.session.delete(f"{h.url}/jobs/{job_id}") as response:
            assert response.status == 200
        assert (await h.job(job_id))["status"] == "cancelled"
        await h.submit_ok(BODY)  # the 3 credits were given back


async def test_concurrency_limit_answers_429_with_the_documented_message() -> None:
    async with harness(concurrency_limit=2) as h:
        await h.submit_ok(BODY)
        await h.submit_ok({**BODY, "seed": 1})
        async with await h.submit({**BODY, "seed": 2}) as response:
            assert response.status == 429
            assert (await response.json())["error"] == (
                "You have reached the maximum number of concurrent jobs."
            )
        h.clock.advance(10)
        await h.submit_ok({**BODY, "seed": 2})


async def test_concurrency_limit_can_backlog_instead() -> None:
    async with harness(concurrency_limit=1, overflow="backlog") as h:
        first = (await h.submit_ok(BODY))["job_id"]
        second = (await h.submit_ok({**BODY, "seed": 1}))["job_id"]
        assert (await h.job(second))["status"] == "backlogged"
        h.clock.advance(10)
        assert (await h.job(first))["status"] == "completed"
        assert (await h.job(second))["status"] == "queued"
        h.clock.advance(10)
        assert (await h.job(second))["status"] == "completed"


async def test_rate_limit_answers_429_with_retry_after() -> None:
    async with harness(rate_limit=2.0, retry_after=3.0) as h:
        statuses = []
        for _ in range(3):
            async with h.session.get(h.url + "/jobs") as response:
                statuses.append(response.status)
                retry_after = response.headers.get("Retry-After")
        assert statuses == [200, 200, 429]
        assert retry_after == "3"
        h.clock.advance(1)
        async with h.session.get(h.url + "/jobs") as response:
            assert response.status == 200
        assert h.emulator.stats["rate_limited"] == 1


async def test_failed_jobs_carry_a_reason() -> None:
    async with harness(failure_rate=1.0) as h:
        ids = [(await h.submit_ok({**BODY, "seed": s}))["job_id"] for s in range(6)]
        h.clock.advance(10)
        for job_id in ids:
            job = await h.job(job_id)
            assert job["status"] == "failed"
            reason = (job.get("result") or {}).get("error") or job["error"]["message"]
            assert reason


async def test_error_rate_gives_5xx_with_an_error_body() -> None:
    async with harness(error_rate=1.0) as h, await h.submit(BODY) as response:
        assert response.status in (500, 502, 503)
        assert "error" in await response.json()
    assert h.emulator.stats["submits"] == 0


async def test_reset_rate_drops_the_connection_before_anything_is_done() -> None:
    async with harness(reset_rate=1.0) as h:
        with pytest.raises(aiohttp.ClientError):
            await h.submit(BODY)
        assert h.emulator.stats["submits"] == 0


async def test_reset_after_create_drops_the_answer_but_the_job_exists() -> None:
    async with harness(reset_after_create=1.0) as h:
        with pytest.raises(aiohttp.ClientError):
            await h.submit(BODY)
        assert h.emulator.stats["submits"] == 1
        async with h.session.get(h.url + "/jobs") as response:
            assert len((await response.json())["items"]) == 1


async def test_malformed_rate_cuts_json_answers_short() -> None:
    async with harness(malformed_rate=1.0) as h, await h.submit(BODY) as response:
        assert response.status == 200
        with pytest.raises(ValueError, match=r"."):
            await response.json()


async def test_truncated_downloads_end_before_their_content_length() -> None:
    async with harness(truncate_rate=1.0) as h:
        job_id = (await h.submit_ok(BODY))["job_id"]
        h.clock.advance(10)
        url = (await h.job(job_id))["result"]["urls"][0]
        with pytest.raises(aiohttp.ClientPayloadError):
            async with h.session.get(url) as response:
                await response.read()


async def test_slow_downloads_still_deliver_every_byte() -> None:
    async with harness(download_bytes_per_s=400_000.0) as h:
        job_id = (await h.submit_ok(BODY))["job_id"]
        h.clock.advance(10)
        url = (await h.job(job_id))["result"]["urls"][0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with h.session.get(url) as response:
            data = await response.read()
        assert len(data) == int(response.headers["Content-Length"])
        assert loop.time() - started >= len(data) / 400_000 * 0.9


async def test_image_urls_expire_and_a_fresh_poll_gives_a_working_one() -> None:
    async with harness(url_ttl=60.0) as h:
        job_id = (await h.submit_ok(BODY))["job_id"]
        h.clock.advance(10)
        old = (await h.job(job_id))["result"]["urls"][0]
        h.clock.advance(61)
        async with h.session.get(old) as response:
            assert response.status == 403
        fresh = (await h.job(job_id))["result"]["urls"][0]
        async with h.session.get(fresh) as response:
            assert response.status == 200


async def test_credits_run_out_with_402_and_failed_jobs_are_refunded() -> None:
    async with harness(credits=6.0, failure_rate=1.0) as h:
        await h.submit_ok(BODY)
        await h.submit_ok({**BODY, "seed": 1})
        async with await h.submit({**BODY, "seed": 2}) as response:
            assert response.status == 402
            assert "credits" in (await response.json())["error"]
        h.clock.advance(10)  # both fail: not billed
        await h.submit_ok({**BODY, "seed": 2})


async def test_retired_models_answer_410_and_deprecated_ones_warn() -> None:
    async with harness(retired=frozenset({"flux-1-dev"}), deprecated=frozenset({"imagen-3"})) as h:
        async with await h.submit(BODY) as response:
            assert response.status == 410
            assert "Sunset" in response.headers
        async with await h.submit({"prompt": "x"}, "/generate/image/google/imagen-3") as response:
            assert response.status == 200
            assert response.headers["Deprecation"] == "true"


async def test_webhooks_are_delivered_as_often_as_asked() -> None:
    async with receiver(expected=2) as hook, harness(webhook_repeats=2) as h:
        async with h.session.post(
            h.url + FLUX, json=BODY, headers={"X-Webhook-URL": hook.url}
        ) as r:
            job_id = (await r.json())["job_id"]
        h.clock.advance(10)
        await asyncio.wait_for(hook.arrived.wait(), 5)
    assert [b["job_id"] for b in hook.bodies] == [job_id, job_id]
    assert hook.bodies[0]["status"] == "completed"


async def test_stats_count_submits_per_body() -> None:
    async with harness() as h:
        await h.submit_ok(BODY)
        await h.submit_ok(BODY)
        await h.submit_ok({**BODY, "seed": 99})
        async with h.session.get(h.url + "/_emulator/stats") as response:
            stats = await response.json()
        assert stats["submits"] == 3
        assert sorted(stats["submits_by_body"].values()) == [1, 2]
        assert stats["duplicate_submits"] == 1


async def test_the_same_seed_replays_the_same_faults() -> None:
    async def pattern() -> list[str]:
        async with harness(seed=42, failure_rate=0.5) as h:
            ids = [(await h.submit_ok({**BODY, "seed": s}))["job_id"] for s in range(12)]
            h.clock.advance(10)
            return [(await h.job(i))["status"] for i in ids]

    first, second = await pattern(), await pattern()
    assert first == second
    assert set(first) == {"completed", "failed"}


async def test_rtt_answers_late_and_stamps_the_job_halfway_along_the_wire() -> None:
    config = EmulatorConfig(rtt=0.2)
    async with (
        run_emulator(config) as emu,
        aiohttp.ClientSession(headers={"Authorization": "Bearer t"}) as session,
    ):
        sent = time.time()
        async with session.post(emu.url + FLUX, json=BODY) as response:
            job = await response.json()
        received = time.time()
        async with session.get(emu.url + "/_emulator/stats") as response:
            await response.json()
        stats_took = time.time() - received
    created = parse_time(job["created_at"])
    assert created is not None
    assert created - sent >= 0.1 - 0.002
    assert received - created >= 0.1 - 0.002
    assert stats_took < 0.1  # the emulator's own stats are not delayed


@pytest.mark.parametrize(
    "knobs",
    [
        {"failure_rate": 1.5},
        {"overflow": "queue"},
        {"time_scale": 0},
        {"images_per_job": 0},
        {"rtt": -1},
    ],
)
def test_impossible_knobs_are_refused(knobs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        EmulatorConfig(**knobs)


@pytest.mark.parametrize("text", ["fixed:1", "uniform:0.5-2", "lognormal:1,0.3", "model"])
def test_latency_distributions_parse(text: str) -> None:
    assert Latency.parse(text).kind == text.split(":")[0]


def test_a_bad_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="not a latency"):
        Latency.parse("uniform:3-1")
