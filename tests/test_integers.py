"""Whole numbers from outside (scheduler variables, flags, columns of a prompts file) are
parsed one way: ASCII digits, a sign only where a negative makes sense, and a clear error
naming where the value came from; never a traceback, never a digit Python alone would take."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.api.webhooks import WebhookSettings
from runner.cli import main
from runner.errors import ManifestError, UsageError
from runner.integers import NotAWholeNumber, parse_int
from runner.manifest import expand, load_manifest, parse_manifest
from runner.sharding import parse_shard

ODD_DIGITS = ["²", "١٢", "1_000", "٣", "１２"]  # isdigit() or int() says yes to each


@pytest.mark.parametrize("value", ODD_DIGITS)
@pytest.mark.parametrize(
    "variable",
    [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
    ],
)
def test_a_slurm_variable_of_odd_digits_is_named(variable: str, value: str) -> None:
    environ = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", variable: value}
    with pytest.raises(UsageError, match=f"--shard auto: {variable}: .* is not a whole number"):
        parse_shard("auto", environ)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"JOB_COMPLETION_INDEX": "²", "KREA_BATCH_SHARDS": "4"}, "JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "1", "KREA_BATCH_SHARDS": "٤"}, "KREA_BATCH_SHARDS"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "-1", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}, "ARRAY_INDEX"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "1", "AWS_BATCH_JOB_ARRAY_SIZE": "9" * 99}, "ARRAY_SIZE"),
    ],
)
def test_other_scheduler_variables_are_named(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(UsageError, match=variable):
        parse_shard("auto", environ)


def test_scheduler_variables_written_from_a_windows_file_still_read() -> None:
    environ = {"SLURM_ARRAY_TASK_ID": " 2\r\n", "SLURM_ARRAY_TASK_COUNT": "\ufeff4"}
    assert parse_shard("auto", environ) == (3, 4)


@pytest.mark.parametrize("text", ["١/٢", "1/²", "auto/٢", f"1/{'9' * 5000}"])
def test_a_shard_flag_of_odd_digits_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text, {"JOB_COMPLETION_INDEX": "0"})


@pytest.mark.parametrize(
    "flag", ["--concurrency", "--max-jobs", "--limit", "--shard-size", "--max-attempts"]
)
@pytest.mark.parametrize("value", [*ODD_DIGITS, "-3"])
def test_a_whole_number_flag_of_odd_digits_exits_2_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["run", "jobs.example.yaml", "--emulator", f"{flag}={value}"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err
    assert "not a whole number" in err


def test_the_shard_flag_and_scheduler_variables_exit_2_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "²")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    out = str(tmp_path / "out")
    assert main(["run", "jobs.example.yaml", "--emulator", "--shard", "auto", "--out", out]) == 2
    assert "SLURM_ARRAY_TASK_ID: '²' is not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["²", "٨٠٨٠", "0", "65536", "8080x"])
def test_a_webhook_port_of_odd_digits_is_a_usage_error(port: str) -> None:
    with pytest.raises(UsageError, match="is not HOST:PORT"):
        WebhookSettings.parse("https://example.com/hook", f"0.0.0.0:{port}")


def _rows_manifest(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "version: 1\njobs:\n"
        + textwrap.indent(
            f"- {{prompts_file: {name}, model: flux-1-dev, sizes: [512x512], "
            "params_from: {seed: seed}}\n",
            "  ",
        )
    )
    return manifest


@pytest.mark.parametrize("seed", ["٧", "1_000", "-1", "4294967296", "7.5"])
def test_a_csv_seed_that_is_no_whole_seed_is_named_with_its_row(tmp_path: Path, seed: str) -> None:
    manifest = _rows_manifest(tmp_path, "rows.csv", f"prompt,seed\na cat,1\na dog,{seed}\n")
    with pytest.raises(ManifestError, match=re.escape("rows.csv:3: seed: ")):
        load_manifest(manifest)


@pytest.mark.parametrize("seed", ["true", "7.5", '"٧"', "-1", "[1]"])
def test_a_jsonl_seed_that_is_no_whole_seed_is_named_with_its_row(
    tmp_path: Path, seed: str
) -> None:
    text = '{"prompt": "a cat", "seed": 1}\n{"prompt": "a dog", "seed": ' + seed + "}\n"
    manifest = _rows_manifest(tmp_path, "rows.jsonl", text)
    with pytest.raises(ManifestError, match=re.escape("rows.jsonl:2: seed: ")):
        load_manifest(manifest)


def test_whole_seeds_in_rows_still_read(tmp_path: Path) -> None:
    manifest = _rows_manifest(tmp_path, "rows.csv", "prompt,seed\na cat, 7 \na dog,4294967295\n")
    assert [spec.seed for spec in expand(load_manifest(manifest))] == [7, 4294967295]


def test_a_size_of_odd_digits_is_refused_at_its_path() -> None:
    text = "version: 1\njobs:\n  - {prompt: a cat, model: flux-1-dev, sizes: [١٠٢٤x٥٧٦]}\n"
    with pytest.raises(ManifestError, match=r"sizes\[0\]"):
        parse_manifest(text)


@given(st.text(max_size=12), st.booleans())
@settings(max_examples=200)
def test_parse_int_takes_ascii_digits_only(text: str, signed: bool) -> None:
    pattern = r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*" if signed else r"[ \t\r\n]*[0-9]+[ \t\r\n]*"
    if not re.fullmatch(pattern, text):
        with pytest.raises(NotAWholeNumber, match=r"^X: "):
            parse_int(text, "X", signed=signed)
        return
    assert parse_int(text, "X", signed=signed) == int(text)
