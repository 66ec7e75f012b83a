"""Mistakes said at once, briefly, with what was meant: flags, commands and manifests."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.cli import main
from runner.cli.parser import build_parser
from runner.errors import ManifestError, ManifestProblems
from runner.manifest import parse_manifest
from runner.manifest.model import MAX_PROBLEMS


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("--emu", "--emulator"), ("--retry-faild", "--retry-failed"), ("--budjet", "--budget")],
)
def test_a_mistyped_flag_names_the_one_meant(
    typed: str, meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "jobs.yaml", typed])
    first = capsys.readouterr().err.splitlines()[0]
    assert f"unknown flag {typed} (did you mean {meant}?)" in first


def test_a_mistyped_command_names_the_one_meant(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["stauts", "out"])
    assert "unknown command 'stauts' (did you mean status?)" in capsys.readouterr().err


BAD = textwrap.dedent("""\
    version: 1
    defaults: {model: flux}
    jobs:
      - prompt: a {animal} in {stlye} style
        vars: {animal: [fox], style: [ink]}
        params: {stepz: 20}
      - prompt: a dog
        params: {width: 4000}
    run: {concurrency: lots}
""")


def test_every_problem_of_a_manifest_is_said_at_once_in_file_order(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest(BAD)
    assert main(["plan", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"krea-batch: error: 5 problems in {path}:"
    said = [line.strip().removeprefix(f"{path}:") for line in lines[1:]]
    assert [line.split(":")[0] for line in said] == ["4", "5", "6", "8", "9"]
    assert (
        "placeholder {stlye} has no value: add it under jobs[0].vars (did you mean {style}?)"
        in (said[0])
    )
    assert "jobs[0].vars.style: is not used" in said[1]
    assert (
        "jobs[0].params.stepz: flux-1-dev does not take 'stepz' (did you mean 'steps'?" in (said[2])
    )
    assert "jobs[1].params.width: 4000 is above the maximum 2368" in said[3]
    assert "run.concurrency" in said[4]


def test_problems_are_said_up_to_a_bound() -> None:
    entries = "".join(
        f"  - {{prompt: p{i}, model: flux, params: {{steps: 0}}}}\n" for i in range(40)
    )
    with pytest.raises(ManifestProblems) as caught:
        parse_manifest("version: 1\njobs:\n" + entries)
    assert len(caught.value.problems) == MAX_PROBLEMS
    assert str(caught.value).endswith("… and maybe more: fix these and plan again")


def test_one_problem_is_said_as_before() -> None:
    with pytest.raises(ManifestError, match="did you mean 'prompt'") as caught:
        parse_manifest("version: 1\njobs:\n  - {promt: a, model: flux}\n")
    assert not isinstance(caught.value, ManifestProblems)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def test_every_positional_argument_has_help_and_a_name_in_capitals() -> None:
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if not action.option_strings:
                assert action.help, f"{name} {action.dest}: no help"
                assert str(action.metavar).isupper(), f"{name} {action.dest}: {action.metavar}"


def test_merge_names_its_inputs_and_its_output_folder_apart() -> None:
    usage = _subparsers()["merge"].format_usage()
    assert "--out DIR" in usage
    assert "INPUT [INPUT ...]" in usage
    assert "--out DIR" in _subparsers()["run"].format_usage()


def test_an_entry_whose_prompts_cannot_be_read_says_that_alone(tmp_path: Path) -> None:
    text = (
        "version: 1\njobs:\n"
        "  - {prompts_file: nothing.txt, model: flux, vars: {x: [1]}}\n"
        "  - {prompt: 'a {y}', model: flux, vars: {'bad name': [1], y: [2]}}\n"
        "  - {prompt: ok, model: flux, params: {stepz: 3}}\n"
    )
    with pytest.raises(ManifestProblems) as caught:
        parse_manifest(text, base_dir=tmp_path)
    assert [p.path for p in caught.value.problems] == [
        "jobs[0].prompts_file",
        "jobs[1].vars.bad name",
        "jobs[2].params.stepz",
    ], "no var said unused for prompts never read, no placeholder for vars never read"
