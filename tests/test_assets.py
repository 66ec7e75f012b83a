"""Local reference images: checked when planned, uploaded once, across a kill -9 too."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.errors import ManifestError
from runner.manifest import expand, load_manifest
from runner.manifest.assets import STAND_IN
from tests.engine_helpers import read_results
from tests.test_resume import kill_at, run_to_end


def _png(path: Path, colour: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())


def _manifest(folder: Path, jobs: int, reference: str = "refs/cat.png") -> Path:
    path = folder / "jobs.yaml"
    refs = json.dumps([{"url": reference, "strength": 0.5}])
    path.write_text(
        "version: 1\n"
        "jobs:\n"
        "  - prompt: a cat number {n}\n"
        f"    vars: {{n: {list(range(jobs))}}}\n"
        "    model: krea-2-medium-turbo\n"
        f"    params: {{aspect_ratio: '1:1', resolution: 1K, image_style_references: {refs}}}\n"
        "    seed: 1\n"
        'run: {"concurrency": 2, "poll_interval": 0.05, "rate_limit": 1000}\n'
    )
    return path


def test_a_local_reference_image_is_checked_and_keyed_by_its_content(tmp_path: Path) -> None:
    _png(tmp_path / "refs/cat.png")
    manifest = load_manifest(_manifest(tmp_path, 1))
    (spec,) = expand(manifest)
    url = spec.body["image_style_references"][0]["url"]
    assert url.startswith(STAND_IN)
    assert manifest.assets[url.removeprefix(STAND_IN)] == (tmp_path / "refs/cat.png").resolve()
    _png(tmp_path / "refs/cat.png", "blue")
    (changed,) = expand(load_manifest(_manifest(tmp_path, 1)))
    assert changed.key != spec.key, "another image is another request"
    with pytest.raises(ManifestError, match=r"image_style_references.*refs/dog\.png"):
        load_manifest(_manifest(tmp_path, 1, "refs/dog.png"))


async def test_a_local_image_is_uploaded_once_across_a_kill_9_and_a_resume(
    tmp_path: Path,
) -> None:
    _png(tmp_path / "refs/cat.png")
    manifest = _manifest(tmp_path, 6)
    out = tmp_path / "out"
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.3"))) as emu:
        await kill_at(emu, "submit", 3, manifest, out)
        assert emu.emulator.stats["assets"] == 1
        code, stderr = await run_to_end(emu, manifest, out)
        stats = emu.emulator.snapshot()
    assert code == 0, stderr
    assert stats["assets"] == 1, "the resume used the URL the journal kept"
    assert stats.get("bad_requests", 0) == 0, "no stand-in or unknown asset URL was sent"
    records = read_results(out)
    assert [r["status"] for r in records] == ["completed"] * 6


async def test_the_emulator_takes_uploads_and_refuses_unknown_asset_urls(tmp_path: Path) -> None:
    _png(tmp_path / "cat.png")
    async with run_emulator(EmulatorConfig()) as emu, aiohttp.ClientSession() as session:
        auth = {"Authorization": "Bearer t"}
        form = aiohttp.FormData()
        form.add_field("file", (tmp_path / "cat.png").read_bytes(), filename="cat.png")
        async with session.post(emu.url + "/assets", data=form, headers=auth) as response:
            asset = await response.json()
        assert (asset["width"], asset["height"], asset["mime_type"]) == (32, 32, "image/png")
        async with session.get(asset["image_url"]) as response:
            assert await response.read() == (tmp_path / "cat.png").read_bytes()
        endpoint = emu.url + "/generate/image/krea/krea-2/medium"
        body = {"prompt": "a cat", "aspect_ratio": "1:1", "resolution": "1K"}
        for url, status in [(asset["image_url"], 200), (asset["image_url"] + "x", 422)]:
            refs = [{"url": url, "strength": 0.5}]
            sent = {**body, "image_style_references": refs}
            async with session.post(endpoint, json=sent, headers=auth) as response:
                assert response.status == status
