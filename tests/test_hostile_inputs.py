"""Hostile manifests, prompts files and output folders: a clear error with its place, never a
traceback, a hang or a write outside the folder."""

from __future__ import annotations

import json
import os
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from runner import run_batch
from runner.cli import main
from runner.cli.status import read_status
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.errors import ManifestError, UsageError
from runner.manifest import expand, load_manifest, parse_manifest
from runner.outputs import read_records
from runner.outputs.merge import merge_folders
from runner.state.journal import Journal
from tests.engine_helpers import FAST, check_folder, small_manifest

QUICK = Latency.parse("fixed:0.02")


def manifest_with(entry: str, *, extra: str = "") -> str:
    return "version: 1\n" + extra + "jobs:\n" + textwrap.indent(entry, "  ")


# ---- YAML ---------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_billion_laughs_is_refused_at_once_with_its_line() -> None:
    layers = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        name, previous = chr(97 + i), chr(96 + i)
        layers.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    text = "version: 1\nlaughs:\n" + textwrap.indent("\n".join(layers), "  ") + "\njobs: []\n"
    with pytest.raises(ManifestError, match="aliases repeat more than") as raised:
        parse_manifest(text, file="bomb.yaml")
    assert raised.value.line is not None


@pytest.mark.parametrize(
    "text",
    ["jobs: &j [ {more: *j} ]\n", "jobs: &j {more: *j}\n"],
    ids=["in a list", "in a mapping"],
)
def test_an_alias_inside_itself_is_refused(text: str) -> None:
    with pytest.raises(ManifestError, match="alias inside the node it names"):
        parse_manifest("version: 1\n" + text, file="loop.yaml")


@pytest.mark.timeout(10)
def test_fifty_thousand_nested_brackets_are_refused_with_a_line() -> None:
    text = "version: 1\njobs: " + "[" * 50_000 + "]" * 50_000 + "\n"
    with pytest.raises(ManifestError, match="nested more than 64 levels") as raised:
        parse_manifest(text, file="deep.yaml")
    assert raised.value.line == 2


def test_a_key_written_beside_a_merge_key_wins_as_yaml_says() -> None:
    text = textwrap.dedent("""
        version: 1
        defaults_block: &first {prompt: a merged prompt, model: seedream-4, sizes: [1024x1024]}
        jobs:
          - <<: *first
            prompt: the written prompt
    """)
    data = json.loads(json.dumps(_yaml(text)))
    assert data["jobs"][0]["prompt"] == "the written prompt"
    assert data["jobs"][0]["model"] == "seedream-4"
    with pytest.raises(ManifestError, match="duplicate key 'prompt'"):
        _yaml("jobs:\n  - {prompt: a, prompt: b}\n")


def _yaml(text: str) -> object:
    from runner.manifest import located_yaml

    return located_yaml.load(text, "m.yaml")[0]


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_lone_surrogate_in_a_prompt_is_named_not_a_traceback(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_with('- {prompt: "cat \\ud800", model: seedream-4}\n'))
    extra = ["--emulator", "--out", str(tmp_path / "out")] if command == "run" else []
    assert main([command, str(manifest), *extra]) == 2
    err = capsys.readouterr().err
    assert "jobs[0].prompt" in err
    assert "lone surrogate" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_a_lone_surrogate_in_a_jsonl_row_is_named(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a \\udc80 b"}\n')
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_with("- {prompts_file: rows.jsonl, model: seedream-4}\n"))
    with pytest.raises(ManifestError, match=r"rows.jsonl:1: text that cannot be written"):
        load_manifest(manifest)


# ---- prompts files ------------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_prompt_or_column(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes("\ufeffcat one\ncat two\n".encode())
    (tmp_path / "p.csv").write_bytes("\ufeffprompt,style\r\ndog one,oil\r\n".encode())
    manifest = tmp_path / "jobs.yaml"
    manifest.write_bytes(
        (
            "\ufeff"
            + manifest_with(
                "- {prompts_file: p.txt, model: seedream-4, sizes: [1024x1024]}\n"
                "- {prompts_file: p.csv, model: seedream-4, sizes: [1024x1024]}\n"
            )
        ).encode()
    )
    prompts = [spec.body["prompt"] for spec in expand(load_manifest(manifest))]
    assert prompts == ["cat one", "cat two", "dog one"]


@pytest.mark.timeout(10)
def test_a_fifo_or_a_device_as_prompts_file_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    for name, kind in (("fifo.txt", "a FIFO"), ("zero.txt", "a character device")):
        manifest = tmp_path / "jobs.yaml"
        manifest.write_text(manifest_with(f"- {{prompts_file: {name}, model: seedream-4}}\n"))
        with pytest.raises(ManifestError, match=f"is not a regular file \\({kind}\\)"):
            load_manifest(manifest)


@pytest.mark.timeout(10)
def test_plan_of_a_device_or_a_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "/dev/zero"]) == 2
    assert main(["plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a regular file (a character device)" in err
    assert "not a regular file (a folder)" in err


# ---- the output folder --------------------------------------------------------------------


def test_an_empty_out_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["run", "jobs.example.yaml", "--emulator", "--out", ""])
    assert raised.value.code == 2
    assert "empty folder name" in capsys.readouterr().err


async def test_an_output_folder_whose_name_is_not_utf8_works_end_to_end(tmp_path: Path) -> None:
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out-\xff"))
    async with run_emulator(EmulatorConfig(latency=QUICK)) as emu:
        await run_batch(small_manifest(3), out, api_base=emu.url, token="t", options=FAST)
        check_folder(out, 3, emu.emulator)
        again = await run_batch(small_manifest(3), out, api_base=emu.url, token="t", options=FAST)
    assert again.counts.skipped == 3
    summary = json.loads((out / "summary.json").read_bytes().decode("utf-8"))  # strict UTF-8
    assert summary["out"].endswith("out-\\xff")
    assert summary["counts"]["completed"] == 0  # this run had nothing left to do


@pytest.mark.parametrize("name", ["results.jsonl", ".krea-batch/lock", ".krea-batch/journal.jsonl"])
async def test_a_symlink_in_the_folder_is_refused_and_its_target_untouched(
    tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    (out / ".krea-batch").mkdir(parents=True)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (out / name).symlink_to(target)
    with pytest.raises(UsageError, match="is a symlink"):
        await run_batch(small_manifest(2), out, api_base="http://127.0.0.1:9", token="t")
    assert target.read_text() == "keep me\n"


async def test_a_huge_sparse_results_file_without_journal_is_read_in_bounded_memory(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with (out / "results.jsonl").open("wb") as handle:
        handle.truncate(1 << 30)  # 1 GB of zeros and no newline: sparse, takes no disk
    tracemalloc.start()
    try:
        async with run_emulator(EmulatorConfig(latency=QUICK)) as emu:
            result = await run_batch(
                small_manifest(2), out, api_base=emu.url, token="t", options=FAST
            )
        merged = merge_folders([out], tmp_path / "merged")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.counts.completed == 2
    assert merged["counts"]["completed"] == 2
    assert peak < 100 << 20, f"{peak / 1e6:.0f} MB held at once"


def test_journal_lines_of_the_wrong_shape_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / ".krea-batch"
    state.mkdir()
    good = {"e": "submitting", "k": "a", "a": 1, "t": 1.0}
    lines = [
        good,
        {"e": "submitting", "k": "b", "a": "one", "t": 1.0},  # a wrong type
        {"e": "submitted", "k": "c", "a": 1},  # no id
        {"e": "submitting", "k": "d", "a": 1, "t": None},  # null where a number goes
        {"e": "done", "k": "e", "record": "not a record"},
        {"e": "ambiguous", "k": "f", "candidates": [1, 2]},
        {"e": "from the future", "k": "g"},
        ["not", "an", "object"],
    ]
    (state / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    journal = Journal.open(state / "journal.jsonl")
    journal.close()
    assert set(journal.ledger.states) == {"a"}
    assert "skipped 7 line(s) of the wrong shape" in caplog.text
    status = read_status(tmp_path)
    assert status.unknown_submits == ["a"]


async def test_json_nested_past_the_parsers_depth_is_malformed_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp import web

    from runner.api.client import KreaClient
    from runner.errors import AmbiguousSubmit, TransientApiError
    from tests.http_helpers import fake_server

    deep = "[" * 100_000 + "]" * 100_000

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=deep, content_type="application/json")

    routes = {("POST", "/generate/image/bfl/flux-1-dev"): answer, ("GET", "/jobs/j"): answer}
    async with fake_server(routes) as url, KreaClient(url, "t") as client:
        with pytest.raises(AmbiguousSubmit) as lost:
            await client.submit("/generate/image/bfl/flux-1-dev", {"prompt": "x"})
        assert lost.value.created  # a 2xx: the job exists, its answer is unreadable
        with pytest.raises(TransientApiError, match="malformed"):
            await client.get_job("j")
    state = tmp_path / ".krea-batch"
    state.mkdir()
    (state / "journal.jsonl").write_text(deep + "\n" + json.dumps({"e": "lost", "k": "a"}) + "\n")
    (tmp_path / "results.jsonl").write_text(deep + "\n")
    journal = Journal.open(state / "journal.jsonl")
    journal.close()
    assert set(journal.ledger.states) == {"a"}
    assert read_status(tmp_path).counts.completed == 0
    assert list(read_records(tmp_path / "results.jsonl")) == []
    assert "1 line(s) skipped that are not a results record" in caplog.text


@pytest.mark.timeout(10)
def test_a_token_fifo_nobody_writes_to_is_empty_not_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "token")
    args = ["run", "jobs.example.yaml", "--token-file", str(tmp_path / "token")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "is empty" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["txt", "csv", "jsonl"])
def test_a_prompts_file_past_the_job_cap_is_refused_without_reading_it_all(
    tmp_path: Path, suffix: str
) -> None:
    rows = [f"prompt {i}" for i in range(50)]
    text = {
        "txt": "\n".join(rows),
        "csv": "prompt\n" + "\n".join(rows),
        "jsonl": "\n".join(json.dumps({"prompt": r}) for r in rows),
    }[suffix]
    (tmp_path / f"p.{suffix}").write_text(text + "\n")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        manifest_with(
            f"- {{prompts_file: p.{suffix}, model: seedream-4, sizes: [1024x1024]}}\n",
            extra="run: {max_jobs: 10}\n",
        )
    )
    with pytest.raises(ManifestError, match="holds more than 10 prompts"):
        load_manifest(manifest)
