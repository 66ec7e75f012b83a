"""A folder knows what it is: the API it was made against, its manifests, its shard."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, Latency
from runner.errors import UsageError
from runner.outputs.identity import (
    EMULATOR,
    FolderIdentity,
    ManifestId,
    api_identity,
    mismatch,
    read_identity,
    write_identity,
)
from tests.engine_helpers import FAST, manifest_text
from tests.in_process import in_process

QUICK = EmulatorConfig(latency=Latency.parse("fixed:0.01"))


def test_a_server_on_this_machine_is_the_emulator_whatever_its_port() -> None:
    assert api_identity("http://127.0.0.1:41234") == EMULATOR
    assert api_identity("http://localhost:8787/") == EMULATOR
    assert api_identity("https://api.krea.ai/") == "https://api.krea.ai"


def test_an_edited_manifest_is_the_same_one_and_a_renamed_copy_too() -> None:
    held = FolderIdentity("files", EMULATOR, (ManifestId("jobs.yaml", "aa"),))
    edited = FolderIdentity("files", EMULATOR, (ManifestId("jobs.yaml", "bb"),))
    copied = FolderIdentity("files", EMULATOR, (ManifestId("copy.yaml", "aa"),))
    other = FolderIdentity("files", EMULATOR, (ManifestId("other.yaml", "cc"),))
    assert mismatch(held, edited) is None
    assert mismatch(held, copied) is None
    reason = mismatch(held, other)
    assert reason is not None
    assert "--append" in reason
    assert "other.yaml" in reason
    assert mismatch(held, other, append=True) is None
    shard = FolderIdentity("files", EMULATOR, held.manifests, shard=(2, 4))
    assert "shard 2 of 4" in (mismatch(held, shard) or "")


async def test_a_folder_made_on_the_emulator_refuses_another_api(
    tmp_path: Path, write_manifest: Callable[[str], Path]
) -> None:
    manifest = write_manifest(manifest_text(jobs=3))
    out = tmp_path / "out"
    async with in_process(QUICK) as emu:
        first = await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        assert first.exit_code == 0
        identity = read_identity(out / "krea-batch.json")
        assert identity is not None
        assert identity.api == EMULATOR
        assert [m.name for m in identity.manifests] == ["jobs.yaml"]
        # As if the folder had been made against Krea's API: this run may not add to it.
        write_identity(out / "krea-batch.json", FolderIdentity("files", "https://api.krea.ai", ()))
        submits = emu.emulator.snapshot()["submits"]
        with pytest.raises(UsageError, match=r"made against https://api.krea.ai.*another --out"):
            await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        assert emu.emulator.snapshot()["submits"] == submits, "refused before anything is sent"


async def test_a_folder_from_before_identities_is_judged_by_its_summary(
    tmp_path: Path, write_manifest: Callable[[str], Path]
) -> None:
    manifest = write_manifest(manifest_text(jobs=2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(
        json.dumps({"api_base": "https://api.krea.ai", "manifest": str(manifest)})
    )
    async with in_process(QUICK) as emu:
        with pytest.raises(UsageError, match=r"made against https://api\.krea\.ai"):
            await run_batch(manifest, out, **emu.via, token="t", options=FAST)
        assert emu.emulator.snapshot().get("submits", 0) == 0


async def test_a_second_manifest_is_refused_unless_appended_and_then_card_and_rows_agree(
    tmp_path: Path, write_manifest: Callable[[str], Path]
) -> None:
    first = write_manifest(manifest_text(jobs=3), "jobs.yaml")
    second = write_manifest(
        manifest_text(jobs=2).replace("a tiny test image", "another image"), "other.yaml"
    )
    out = tmp_path / "out"
    async with in_process(QUICK) as emu:
        await run_batch(first, out, **emu.via, token="t", options=FAST)
        with pytest.raises(UsageError, match=r"holds the jobs of jobs.yaml, not of other.yaml"):
            await run_batch(second, out, **emu.via, token="t", options=FAST)
        again = await run_batch(second, out, **emu.via, token="t", options=FAST, append=True)
    assert again.exit_code == 0
    assert again.counts.completed == 2
    identity = read_identity(out / "krea-batch.json")
    assert identity is not None
    assert [m.name for m in identity.manifests] == ["jobs.yaml", "other.yaml"]
    rows = (out / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 5, "the metadata holds both manifests' images"
    card = (out / "README.md").read_text()
    assert "Images of 5 text-to-image jobs" in card
