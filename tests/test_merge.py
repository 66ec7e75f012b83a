"""`merge` of every format: shard folders into one dataset (shards copied whole and renumbered,
its own card, status and gallery), the refusals, missing and unfinished shards, and a merge
killed midway finished by running it again."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from runner.batch import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency
from runner.outputs import FileEntry, OutputFolder
from runner.outputs.identity import IDENTITY_NAME, FolderIdentity, manifest_id_of, write_identity
from runner.outputs.images import intact
from runner.outputs.trees import Tree
from tests.engine_helpers import FAST, manifest_text, read_results
from tests.in_process import in_process

FORMATS = ["files", "webdataset", "parquet"]
JOBS = 9
SHARDS = 3


async def _run_split(root: Path, format: str) -> list[Path]:
    manifest = root / "jobs.yaml"
    manifest.write_text(manifest_text(JOBS, format=format, shard_size=2))
    folders = []
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        for index in range(1, SHARDS + 1):
            folder = root / f"shard-{index}"
            options = dataclasses.replace(FAST, shard=(index, SHARDS))
            await run_batch(manifest, folder, **emu.via, token="t", options=options)
            identity = FolderIdentity(
                format=format,
                api="emulator",
                manifests=(manifest_id_of(str(manifest)),),
                shard=(index, SHARDS),
            )
            write_identity(folder / IDENTITY_NAME, identity)  # as the run will write it
            folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """A split of JOBS jobs in three shards, for each format (run once for the module)."""
    made = {}
    for format in FORMATS:
        root = tmp_path_factory.mktemp(format)
        made[format] = asyncio.run(_run_split(root, format))
    return made


@pytest.fixture
def split(splits: dict[str, list[Path]], tmp_path: Path, request: Any) -> list[Path]:
    """A copy of the split of the test's format, the test's own to change."""
    format = getattr(request, "param", "webdataset")
    copies = []
    for folder in splits[format]:
        copy = tmp_path / folder.name
        shutil.copytree(folder, copy)
        copies.append(copy)
    return copies


def _merge(*args: str | Path) -> int:
    return main(["merge", *(str(a) for a in args)])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's mtime and size (the lock aside: each merge takes it)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("split", FORMATS, indirect=True)
def test_a_split_of_every_format_merges_into_one_dataset(
    split: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = tmp_path / "merged"
    assert _merge(*reversed(split), "--out", merged) == 0, capsys.readouterr().err
    records = read_results(merged)
    assert len(records) == len({r["key"] for r in records}) == JOBS
    assert {r["status"] for r in records} == {"completed"}
    for record in records:
        assert intact(merged, FileEntry(**record["files"][0])), record["files"][0]
    identity = json.loads((merged / IDENTITY_NAME).read_text())
    assert identity["merged_from"] == [str(s) for s in reversed(split)]
    format = identity["format"]
    if format != "files":
        suffix = ".tar" if format == "webdataset" else ".parquet"
        written = sorted(p.name for p in (merged / "shards").iterdir())
        assert written == [f"{n:05d}{suffix}" for n in range(len(written))], "renumbered"
        sources = [p for s in split for p in sorted((s / "shards").iterdir())]
        assert len(written) == len(sources)
        assert [_sha256(merged / "shards" / n) for n in written] == [_sha256(p) for p in sources], (
            "copied whole, in the order of the shards, whatever order they were given in"
        )
    else:
        assert len((merged / "metadata.jsonl").read_text().splitlines()) == JOBS
    assert "- krea-batch" in (merged / "README.md").read_text()
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(merged), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"]
    assert len(loaded["train"]) == JOBS
    capsys.readouterr()
    assert main(["status", str(merged), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["completed"] == JOBS
    assert main(["report", str(merged)]) == 0
    chunk = (merged / "report" / "c00001.js").read_text()
    for record in records:
        assert record["key"] in chunk
    if format != "files":
        thumbs = sorted((merged / "report" / "thumbs").iterdir())
        assert len(thumbs) == JOBS
        assert all(f'"report/thumbs/{t.name}"' in chunk for t in thumbs)
        from PIL import Image

        with Image.open(thumbs[0]) as image:
            assert image.format == "JPEG"


def _stderr_of(code: int, want: int, capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert code == want, err
    assert "Traceback" not in err
    return err


def test_merge_refuses_what_it_cannot_merge(
    split: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two, three = split
    out = tmp_path / "merged"
    cases: list[tuple[list[str | Path], str]] = [
        ([one, two, three, "--out", two], "is also an input"),
        ([one, two, three, "--out", two / "inner"], "is inside the input"),
        ([one, two, tmp_path / "merged" / "x", "--out", out], "is inside --out"),
        ([one, two, tmp_path / "nothing", "--out", out], "nothing: no such folder"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append(([one, two, tmp_path / "empty", "--out", out], "is it a krea-batch output"))
    for args, message in cases:
        err = _stderr_of(_merge(*args), 2, capsys)
        assert message in err
        assert err.count("\n") == 1, "one line"
    with OutputFolder(two):  # a live run holds it
        err = _stderr_of(_merge(one, two, three, "--out", out), 2, capsys)
    assert f"{two} is in use by a live krea-batch run" in err
    assert not out.exists(), "nothing written for a refused merge"


@pytest.mark.parametrize("split", ["files"], indirect=True)
def test_merge_refuses_mixed_formats_and_other_manifests(
    split: list[Path],
    splits: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tar = splits["webdataset"][1]
    err = _stderr_of(_merge(split[0], tar, "--out", tmp_path / "m"), 2, capsys)
    assert "different formats" in err
    assert "(webdataset)" in err
    identity = json.loads((split[2] / IDENTITY_NAME).read_text())
    identity["manifests"] = [{"name": "other.yaml", "sha256": "0" * 64}]
    (split[2] / IDENTITY_NAME).write_text(json.dumps(identity))
    err = _stderr_of(_merge(*split, "--out", tmp_path / "m"), 2, capsys)
    assert "different manifests" in err
    assert "other.yaml" in err


def test_a_missing_shard_exits_3_unless_partial(
    split: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, _two, three = split
    out = tmp_path / "merged"
    err = _stderr_of(_merge(one, three, "--out", out), 3, capsys)
    assert "shard 2 of 3 (task 1) is missing" in err
    assert "--partial" in err
    assert not out.exists()
    assert _merge(one, three, "--out", out, "--partial") == 0
    captured = capsys.readouterr()
    assert "shard 2 of 3 (task 1) is missing" in captured.err
    expected = {r["key"] for r in read_results(one) + read_results(three)}
    assert {r["key"] for r in read_results(out)} == expected
    # The shard from summary.json where there is no identity: the same answer.
    for folder in (one, three):
        (folder / IDENTITY_NAME).unlink()
        summary = json.loads((folder / "summary.json").read_text())
        summary["shard"] = [int(folder.name[-1]), 3]
        (folder / "summary.json").write_text(json.dumps(summary))
    err = _stderr_of(_merge(one, three, "--out", tmp_path / "again"), 3, capsys)
    assert "shard 2 of 3 (task 1) is missing" in err


def test_an_unfinished_shard_exits_3_and_failed_jobs_exit_1(
    split: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _one, two, three = split
    summary = json.loads((two / "summary.json").read_text())
    summary["counts"]["unfinished"] = 2
    (two / "summary.json").write_text(json.dumps(summary))
    err = _stderr_of(_merge(*split, "--out", tmp_path / "m"), 3, capsys)
    assert f"shard 2 of 3 (task 1, {two}) is unfinished (2 jobs left" in err
    summary["counts"]["unfinished"] = 0
    (two / "summary.json").write_text(json.dumps(summary))
    records = read_results(three)
    records[0] |= {"status": "failed", "files": [], "error": "boom"}
    (three / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    err = _stderr_of(_merge(*split, "--out", tmp_path / "m"), 1, capsys)
    assert "failed" in err
    assert len(read_results(tmp_path / "m")) == JOBS


class _Killed(BaseException):
    """A kill -9 stand-in: nothing catches it."""


@pytest.mark.parametrize("split", ["webdataset", "files"], indirect=True)
def test_a_merge_killed_midway_is_finished_by_running_it_again(
    split: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean = tmp_path / "clean"
    assert _merge(*split, "--out", clean) == 0
    out = tmp_path / "merged"
    copy_from = Tree.copy_from
    calls = 0

    def dies_on_the_third(self: Tree, source: Tree, relative: str, target: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise _Killed
        copy_from(self, source, relative, target)

    with monkeypatch.context() as patch:
        patch.setattr(Tree, "copy_from", dies_on_the_third)
        with pytest.raises(_Killed):
            _merge(*split, "--out", out)
    assert not (out / IDENTITY_NAME).exists()
    assert not (out / "results.jsonl").exists()
    folder = out / ("shards" if (out / "shards").exists() else "images")
    (folder / ".00002.tar.part").write_bytes(b"half a shard")  # what a real kill -9 leaves
    assert _merge(*split, "--out", out) == 0, capsys.readouterr().err
    assert read_results(out) == read_results(clean)
    files = {k: v for k, v in _snapshot(out).items() if not k.startswith((".", "report/"))}
    assert files.keys() == {k for k in _snapshot(clean) if not k.startswith((".", "report/"))}, (
        "the same folder as an uninterrupted merge, nothing left over"
    )
    for name in files:
        if name.startswith(("shards/", "images/")):
            assert _sha256(out / name) == _sha256(clean / name)
    before = _snapshot(out)
    capsys.readouterr()
    assert _merge(*split, "--out", out) == 0
    assert "already merged" in capsys.readouterr().out
    assert _snapshot(out) == before, "a finished merge run again changes nothing"


def test_merge_into_a_folder_that_holds_something_else_is_refused(
    split: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _stderr_of(_merge(*split, "--out", out), 2, capsys)
    assert "already holds files and is no merge of these folders" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"], "nothing of ours left in it"
    assert _merge(*split, "--out", tmp_path / "new") == 0
    again = [f"{s.parent}/./{s.name}/" for s in split]  # the same folders, spelt otherwise
    assert _merge(*again, "--out", tmp_path / "new") == 0, capsys.readouterr().err


def test_the_gallery_of_a_shard_folder_shows_thumbnails_up_to_a_cap(
    split: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = max(split, key=lambda f: len(read_results(f)))
    records = read_results(folder)
    assert len(records) > 2
    monkeypatch.setattr("runner.outputs.report.MAX_THUMBS", 2)
    assert main(["report", str(folder)]) == 0
    thumbs = list((folder / "report" / "thumbs").iterdir())
    assert len(thumbs) == 2
    chunk = (folder / "report" / "c00001.js").read_text()
    cards = json.loads(chunk[chunk.index(",") + 1 : chunk.rindex(")")])
    assert [c["path"] is not None for c in cards] == [True, True] + [False] * (len(records) - 2)
    assert all(c["where"].startswith("shards/") for c in cards)
    inode = thumbs[0].stat().st_ino
    assert main(["report", str(folder)]) == 0
    assert (folder / "report" / "thumbs" / thumbs[0].name).stat().st_ino == inode, "kept"


def test_merge_help_names_its_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = capsys.readouterr().out
    assert "INPUT" in text
    assert "--partial" in text
    assert "the shard folders" in text
