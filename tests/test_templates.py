"""Name templates are checked once, before anything is sent, against every job they will name:
a field a job has no value for, a format spec its value cannot take, a conversion or a lookup
are each a UsageError naming the entry and the model (exit 2), in `plan` and in `run`."""

from __future__ import annotations

import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency
from runner.errors import UsageError
from runner.manifest import expand, parse_manifest
from runner.naming import FIELDS, add_name, check_names, check_template
from tests.engine_helpers import FAST
from tests.in_process import in_process

# Two entries: the second has a model that may take no seed (its seeds become replicas).
MANIFEST = """\
version: 1
jobs:
  - {prompt: a red fox, model: flux-1-dev, sizes: [512x512], seeds: [1, 2]}
  - {prompt: a blue owl, model: MODEL, sizes: [SIZE], seeds: [1, 2]}
run: {poll_interval: 0.02, lost_answer_wait: 10ms}
"""


SIZES = {"nano-banana-pro": '"1:1"', "gpt-image": "1024x1024", "seedream-4": "1024x1024"}


def manifest_for(model: str) -> str:
    return MANIFEST.replace("MODEL", model).replace("SIZE", SIZES[model])


def plan(tmp_path: Path, template: str, model: str = "nano-banana-pro") -> int:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_for(model))
    return main(["plan", str(manifest), f"--name-template={template}"])


@pytest.mark.parametrize(
    ("template", "model", "says"),
    [
        (
            "{seed:05d}-{key}",
            "nano-banana-pro",
            "jobs[1] (nano-banana-pro): the job sends no seed",
        ),
        ("{seed:x}-{key}", "gpt-image", "jobs[1] (gpt-image): the job sends no seed"),
        ("{model}/{seed:>5}-{key}", "gpt-image", "so {seed} has no number to format"),
        ("{model}/{seed}", "gpt-image", "the same file name images/gpt-image/noseed"),
        ("{key:d}", "seedream-4", "{key} is a text, which this format spec does not fit"),
        ("{index:s}", "seedream-4", "{index} is a number, which this format spec does not fit"),
        ("{prompt!r}-{key}", "seedream-4", "{prompt!r}: no conversion"),
        ("{prompt.upper}-{key}", "seedream-4", "no attribute or index lookup"),
        ("{prompt[0]}-{key}", "seedream-4", "no attribute or index lookup"),
        ("{index:{seed}}", "seedream-4", "a format spec holds no field"),
        ("{key:>100000000}", "seedream-4", "above the maximum 255"),
    ],
)
def test_plan_refuses_a_template_that_does_not_fit_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: str, model: str, says: str
) -> None:
    assert plan(tmp_path, template, model) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_a_seed_the_entry_does_not_give_is_named_with_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text("version: 1\njobs:\n  - {prompt: a cat, model: flux-1-dev}\n")
    assert main(["plan", str(manifest), "--name-template={seed:05d}"]) == 2
    assert "jobs[0] (flux-1-dev): the job sends no seed" in capsys.readouterr().err


def test_templates_that_fit_every_job_still_plan(tmp_path: Path) -> None:
    for template in ("{model}/{seed:05d}-{key}", "{index:05d}", "{prompt:.10}-{key:>20}"):
        assert plan(tmp_path, template, "seedream-4") == 0
    assert plan(tmp_path, "{model}/{replica}-{key}.png") == 0


async def test_run_refuses_it_before_sending_anything(tmp_path: Path) -> None:
    text = manifest_for("nano-banana-pro")
    manifest = parse_manifest(text, overrides={"name_template": "{model}/{seed:05d}"})
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        with pytest.raises(UsageError, match=r"jobs\[1\] \(nano-banana-pro\)"):
            await run_batch(manifest, tmp_path / "out", **emu.via, token="t", options=FAST)
        assert emu.emulator.stats["submits"] == 0


def test_run_exits_2_on_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_for("gpt-image"))
    out = str(tmp_path / "out")
    assert main(["run", str(manifest), "--emulator", "--out", out, "--name-template={seed:x}"]) == 2
    err = capsys.readouterr().err
    assert "jobs[1] (gpt-image)" in err
    assert "Traceback" not in err


# ---- any template of the format grammar ---------------------------------------------------

names = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS).map(lambda f: f + ".upper"),
    st.sampled_from(FIELDS).map(lambda f: f + "[0]"),
    st.sampled_from(["", "0", "nope", "seed ", "key]"]),
)
specs = st.builds(
    lambda fill_align, sign, alt, zero, width, group, precision, kind: "".join(
        (fill_align, sign, alt, zero, width, group, precision, kind)
    ),
    st.sampled_from(["", "<", ">", "^", "=", "*<", "0>", "{<", "é^"]),
    st.sampled_from(["", "+", "-", " "]),
    st.sampled_from(["", "#", "z"]),
    st.sampled_from(["", "0"]),
    st.sampled_from(["", "5", "20", "256", "9" * 30, "٣"]),
    st.sampled_from(["", ",", "_"]),
    st.sampled_from(["", ".0", ".3", ".300"]),
    st.sampled_from(["", *"bcdeEfFgGnosxX%", "q"]),
)
fields = st.builds(
    lambda name, conversion, spec: "{" + name + conversion + spec + "}",
    names,
    st.sampled_from(["", "!r", "!s", "!a", "!x", "!"]),
    st.one_of(st.just(""), specs.map(lambda s: ":" + s), st.just(":{seed}"), st.just(":{}")),
)
literals = st.one_of(
    st.text(st.characters(exclude_characters="{}"), max_size=4),
    st.sampled_from(["{{", "}}", "/", "..", "../", "\\", "{", "}", ".png", "\x00", "-"]),
)
templates = st.lists(st.one_of(fields, literals), min_size=1, max_size=5).map("".join)
few = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="krea-templates-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def specs_of_both_kinds() -> list[object]:
    return list(expand(parse_manifest(manifest_for("nano-banana-pro"))))


@few
@given(template=templates)
def test_any_template_is_named_or_refused_by_the_runs_check(
    template: str, specs_of_both_kinds: list[object], scratch: Path
) -> None:
    """What the run's survey does with a template (runner.engine.engine): only UsageError."""
    try:
        stem = check_template(template)
        names: dict[str, int] = {}
        for spec in specs_of_both_kinds:
            add_name(names, stem, template, spec)  # type: ignore[arg-type]
        check_names(names, template, scratch / "images")
    except UsageError:
        return
    assert all(set(name) <= set(string.ascii_letters + string.digits + "._-/") for name in names)


@few
@given(template=templates)
def test_any_template_given_to_plan_exits_0_or_2(
    template: str, scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plan(scratch, template) in (0, 2)
    assert "Traceback" not in capsys.readouterr().err
