"""Provenance inside images: written without touching pixels, read back by `inspect`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from runner import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.outputs import OutputFolder, provenance
from runner.outputs.provenance import embed, read
from tests.engine_helpers import FAST, check_folder, read_results, small_manifest

FIELDS = {"prompt": "a fox «in the snow» & <stars>", "model": "flux-1-dev", "seed": 7}


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_embedding_keeps_the_pixels_and_reports_the_final_files_digest(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"image.{kind.lower()}"
    Image.new("RGB", (40, 30), (200, 30, 60)).save(path, kind)
    with Image.open(path) as before:
        pixels = before.tobytes()
    sha256, size = embed(path, FIELDS)
    assert (sha256, size) == (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as after:
        assert after.tobytes() == pixels
    assert read(path) == FIELDS


def test_an_image_without_provenance_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    assert read(path) is None


async def test_a_run_writes_provenance_that_inspect_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        url = emu.url
        await run_batch(small_manifest(3), tmp_path / "on", api_base=url, token="t", options=FAST)
        check_folder(tmp_path / "on", 3, emu.emulator)  # sha256 of each file as it lies
        plain = dataclasses.replace(FAST, embed_metadata=False)
        await run_batch(small_manifest(1), tmp_path / "off", api_base=url, token="t", options=plain)
    record = read_results(tmp_path / "on")[0]
    image = tmp_path / "on" / record["files"][0]["path"]
    assert main(["inspect", str(image)]) == 0
    out = capsys.readouterr().out
    assert "a tiny test image" in out
    assert "seedream-4" in out
    assert record["job_id"] in out
    assert f"seed:       {record['seed']}" in out
    off = read_results(tmp_path / "off")[0]
    assert read(tmp_path / "off" / off["files"][0]["path"]) is None
    assert main(["inspect", str(tmp_path / "off" / off["files"][0]["path"])]) == 2


def test_inspect_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(io.BytesIO(b"hello").getvalue())
    assert main(["inspect", str(path)]) == 2


def test_a_crash_while_embedding_leaves_nothing_the_next_start_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OutputFolder(tmp_path) as folder:
        part = folder.partial_path("0123456789abcdef")
        Image.new("RGB", (4, 4)).save(part, "PNG")

    def killed(*args: object) -> None:
        raise RuntimeError("killed between writing the copy and renaming it")

    monkeypatch.setattr(provenance.os, "replace", killed)
    with pytest.raises(RuntimeError):
        embed(part, FIELDS)
    monkeypatch.undo()
    assert len([p for p in (tmp_path / "images").rglob("*") if p.is_file()]) == 2
    with OutputFolder(tmp_path):
        pass
    assert not [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
