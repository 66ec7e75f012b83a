"""Manifest loading and expansion: what users write, and the errors they get for mistakes."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.errors import ManifestError
from runner.manifest import expand, load_manifest, parse_manifest

Write = Callable[..., Path]


def specs(text: str, **kwargs: object) -> list:  # type: ignore[type-arg]
    return list(expand(parse_manifest(textwrap.dedent(text), **kwargs)))  # type: ignore[arg-type]


def test_a_single_prompt_becomes_one_job_with_defaults_applied() -> None:
    [spec] = specs("""
        version: 1
        defaults: {model: flux, params: {steps: 20}}
        jobs: [{prompt: a red fox}]
    """)
    assert spec.model == "flux-1-dev"
    assert spec.endpoint == "/generate/image/bfl/flux-1-dev"
    assert dict(spec.body) == {"prompt": "a red fox", "steps": 20}
    assert spec.units == 3.0


def test_vars_models_seeds_and_count_multiply_in_a_fixed_order() -> None:
    jobs = specs("""
        version: 1
        jobs:
          - prompt: a {animal} at {time}
            vars: {animal: [fox, owl, cat], time: [dawn, dusk]}
            models: [flux-1-dev, seedream-4]
            model_params: {seedream-4: {width: 1024, height: 1024}}
            seeds: [1, 2]
            count: 2
    """)
    assert len(jobs) == 3 * 2 * 2 * 2 * 2
    assert [j.index for j in jobs] == list(range(len(jobs)))
    first = jobs[0]
    assert (first.prompt, first.model, first.seed, first.replica) == (
        "a fox at dawn",
        "flux-1-dev",
        1,
        0,
    )
    assert jobs[1].replica == 1
    assert jobs[2].seed == 2
    assert jobs[4].model == "seedream-4"
    assert jobs[8].prompt == "a fox at dusk"
    assert dict(jobs[4].body) == {
        "prompt": "a fox at dawn",
        "width": 1024,
        "height": 1024,
        "seed": 1,
    }


def test_sizes_set_width_and_height_or_the_aspect_ratio() -> None:
    jobs = specs("""
        version: 1
        jobs:
          - {prompt: a, model: flux-1-dev, sizes: [1024x576, 640 x 640]}
          - {prompt: abc, model: nano-banana-pro, sizes: ["16:9"]}
    """)
    assert [
        (j.body.get("width"), j.body.get("height"), j.body.get("aspect_ratio")) for j in jobs
    ] == [(1024, 576, None), (640, 640, None), (None, None, "16:9")]


def test_seed_auto_is_stable_and_differs_between_jobs() -> None:
    text = """
        version: 1
        jobs: [{prompt: a, model: flux-1-dev, seed: auto, count: 3}]
    """
    first, again = specs(text), specs(text)
    seeds = [j.seed for j in first]
    assert seeds == [j.seed for j in again]
    assert len(set(seeds)) == 3
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)


def test_seeds_on_a_model_without_seed_become_replicas_with_a_warning() -> None:
    manifest = parse_manifest(
        textwrap.dedent("""
        version: 1
        jobs: [{prompt: abc, model: nano-banana-pro, seeds: [1, 2, 3]}]
    """)
    )
    jobs = list(expand(manifest))
    assert len({j.key for j in jobs}) == 3
    assert all("seed" not in j.body for j in jobs)
    assert "takes no seed" in manifest.warnings[0]


def test_identical_jobs_are_run_once_and_counted() -> None:
    manifest = parse_manifest(
        textwrap.dedent("""
        version: 1
        defaults: {model: flux-1-dev}
        jobs: [{prompt: same}, {prompt: same}, {prompt: other}]
    """)
    )
    expansion = expand(manifest)
    assert [j.prompt for j in expansion] == ["same", "other"]
    assert expansion.duplicates == 1


def test_prompts_files_in_three_formats(write_manifest: Write, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("# comment\nfirst\n\nsecond\n")
    (tmp_path / "p.csv").write_text("id,text\n1,third\n2,fourth\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "fifth"}\n\n{"prompt": "sixth"}\n')
    path = write_manifest("""
version: 1
defaults: {model: flux-1-dev}
jobs:
  - prompts_file: p.txt
  - {prompts_file: p.csv, column: text}
  - prompts_file: p.jsonl
""")
    assert [j.prompt for j in expand(load_manifest(path))] == [
        "first",
        "second",
        "third",
        "fourth",
        "fifth",
        "sixth",
    ]


def test_every_column_of_a_prompts_file_is_a_var_of_its_row(
    write_manifest: Write, tmp_path: Path
) -> None:
    rows = ["prompt,style,id"] + [f"a fox,{style},{n}" for n, style in enumerate("ab" * 3)]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "an owl", "style": "ink", "deep": {"x": 1}}\n')
    path = write_manifest("""
version: 1
defaults: {model: flux-1-dev}
jobs:
  - prompts_file: p.csv
    prompt_template: "{prompt}, in {style} style"
    name: "{style}/{id}"
  - prompts_file: p.jsonl
    prompt_template: "{prompt} ({style})"
""")
    specs = list(expand(load_manifest(path)))
    assert [s.prompt for s in specs[:2]] == ["a fox, in a style", "a fox, in b style"]
    assert len(specs) == 3, "the same request twice is one job, whatever its id column says"
    assert specs[0].vars == {"style": "a", "id": "0"}
    assert specs[0].name == "a/0"
    assert specs[2].prompt == "an owl (ink)"
    assert specs[2].vars == {"style": "ink"}, "a nested JSON value is no var"


def test_a_placeholder_no_column_or_var_fills_is_named(
    write_manifest: Write, tmp_path: Path
) -> None:
    (tmp_path / "p.csv").write_text("prompt,style\na fox,ink\n")
    path = write_manifest("""
version: 1
defaults: {model: flux-1-dev}
jobs:
  - {prompts_file: p.csv, prompt_template: "{prompt} in {mood}"}
""")
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.prompt_template.*\{mood\} has no value"):
        load_manifest(path)
    path = write_manifest("""
version: 1
defaults: {model: flux-1-dev}
jobs:
  - {prompts_file: p.csv, prompt_template: "{prompt}, {style}", vars: {style: [a, b]}}
""")
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.vars\.style.*also a column"):
        load_manifest(path)


def test_run_settings_come_from_the_manifest_and_yield_to_overrides() -> None:
    manifest = parse_manifest(
        textwrap.dedent("""
        version: 1
        jobs: [{prompt: a, model: flux}]
        run: {concurrency: 4, rate_limit: 120/min, poll_interval: 500ms}
    """),
        overrides={"concurrency": 16},
    )
    assert (
        manifest.settings.concurrency,
        manifest.settings.rate_limit,
        manifest.settings.poll_interval,
    ) == (16, 2.0, 0.5)


def test_editing_one_entry_changes_only_its_keys() -> None:
    template = """
        version: 1
        defaults: {{model: flux-1-dev}}
        jobs:
          - {{prompt: a fox, seeds: [1, 2]}}
          - {{prompt: {second}, seeds: [1, 2]}}
          - {{prompt: a cat, count: 2}}
    """
    before = specs(template.format(second="an owl"))
    after = specs(template.format(second="an eagle"))
    assert [j.key for j in before[:2]] == [j.key for j in after[:2]]
    assert [j.key for j in before[4:]] == [j.key for j in after[4:]]
    assert not {j.key for j in before[2:4]} & {j.key for j in after[2:4]}


BAD_MANIFESTS = [
    # (manifest body, expected path, expected words, expected line)
    ("jobs: [{prompt: a, model: flux}]", "", "missing required key 'version'", None),
    ("version: 2\njobs: [{prompt: a, model: flux}]", "version", "expected 1", 1),
    ("version: 1\njobs: []", "jobs", "must not be empty", 2),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux, promt: b}",
        "jobs[0].promt",
        "did you mean 'prompt'",
        3,
    ),
    (
        "version: 1\njobs:\n  - {model: flux}",
        "jobs[0]",
        "needs one of prompt, prompts or prompts_file",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, prompts: [b], model: flux}",
        "jobs[0].prompts",
        "use only one of",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: '  ', model: flux}",
        "jobs[0].prompt",
        "the prompt is empty",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux-2-dev}",
        "jobs[0].model",
        "unknown model 'flux-2-dev'; did you mean flux-1-dev",
        3,
    ),
    (
        "version: 1\njobs:\n  - prompt: a\n    model: flux\n    params: {width: 4000}",
        "jobs[0].params.width",
        "4000 is above the maximum 2368 for flux-1-dev",
        5,
    ),
    (
        "version: 1\ndefaults: {params: {steps: 20}}\n"
        "jobs:\n  - {prompt: abc, model: nano-banana-pro}",
        "defaults.params.steps",
        "nano-banana-pro does not take 'steps'",
        2,
    ),
    (
        "version: 1\njobs:\n  - {prompt: 'a {animal}', model: flux}",
        "jobs[0].prompt",
        "placeholder {animal} has no value",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, vars: {x: [1, 2]}, model: flux}",
        "jobs[0].vars.x",
        "is not used as a {placeholder}",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux, seed: lucky}",
        "jobs[0].seed",
        "a whole number or 'auto'",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux, count: 0}",
        "jobs[0].count",
        "below the minimum 1",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux, sizes: [big]}",
        "jobs[0].sizes[0]",
        "WIDTHxHEIGHT",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: seedream-4}",
        "jobs[0]",
        "seedream-4 requires 'width'",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux, params: {seed: 3}}",
        "jobs[0].params.seed",
        "not in params",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux}\nrun: {rate_limit: fast}",
        "run.rate_limit",
        "is not a rate",
        4,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux}\nrun: {speed: 3}",
        "run.speed",
        "unknown key",
        4,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux, prompts_file: x.txt}",
        "jobs[0].prompts_file",
        "use only one of",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompts_file: missing.txt, model: flux}",
        "jobs[0].prompts_file",
        "does not exist",
        3,
    ),
    (
        "version: 1\njobs:\n  - {prompt: ab, model: nano-banana-pro}",
        "jobs[0].prompt",
        "shorter than 3 characters",
        None,
    ),
    (
        "version: 1\njobs:\n  - {prompt: a, model: flux}\n  - {prompt: a, model: flux, prompt: b}",
        "jobs[1].prompt",
        "duplicate key",
        4,
    ),
    (
        "version: 1\njobs:\n  - prompt: a\n    vars: {x: [1, 2, 3]}\n    name: '{x}'\n"
        "    model: flux\n    seeds: [1, 2, 3]\n    count: 4\nrun: {max_jobs: 20}",
        "jobs",
        "above the cap of 20",
        3,
    ),
]


@pytest.mark.parametrize(("body", "path", "words", "line"), BAD_MANIFESTS)
def test_bad_manifests_say_where_and_what(
    write_manifest: Write, body: str, path: str, words: str, line: int | None
) -> None:
    file = write_manifest(body)
    with pytest.raises(ManifestError) as caught:
        list(expand(load_manifest(file)))
    error = caught.value
    assert words in error.message
    assert error.path == path
    assert error.file == str(file)
    if line is not None:
        assert error.line == line


def test_yaml_syntax_errors_give_line_and_column(write_manifest: Write) -> None:
    file = write_manifest("version: 1\njobs:\n  - {prompt: [unclosed\n")
    with pytest.raises(ManifestError, match="invalid YAML") as caught:
        load_manifest(file)
    assert caught.value.line is not None
    assert caught.value.column is not None
    assert str(caught.value).startswith(f"{file}:")


def test_a_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "nope.yaml")


def test_the_example_manifest_is_valid() -> None:
    from tests.conftest import ROOT

    manifest = load_manifest(ROOT / "jobs.example.yaml")
    jobs = list(expand(manifest))
    assert len(jobs) == manifest.total_jobs
    assert {j.model for j in jobs} >= {"flux-1-dev", "nano-banana-pro"}


def _one_job(model: str, extra: str) -> str:
    return f"version: 1\njobs:\n  - prompt: a lighthouse\n    model: {model}\n{extra}"


def test_krea_2_needs_its_size_and_takes_its_own_enums() -> None:
    good = "    params: {aspect_ratio: '2.35:1', resolution: 1K, creativity: medium}\n"
    (spec,) = expand(parse_manifest(_one_job("krea-2-medium-turbo", good)))
    assert spec.usd == 0.015
    assert spec.body["creativity"] == "medium"
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.params\.resolution: '2K' is not one"):
        parse_manifest(_one_job("krea-2-medium-turbo", good.replace("1K", "2K")))
    with pytest.raises(ManifestError, match=r"jobs\[0\]: .*requires 'aspect_ratio'"):
        parse_manifest(_one_job("krea-2-medium-turbo", "    params: {resolution: 1K}\n"))


def test_gpt_image_2_takes_an_aspect_ratio_as_its_size() -> None:
    (spec,) = expand(parse_manifest(_one_job("gpt-image-2", "    sizes: ['16:9']\n")))
    assert spec.body["aspect_ratio"] == "16:9"
    assert "width" not in spec.body


def test_flux_sends_guidance_scale_and_takes_the_old_name_with_a_hint() -> None:
    manifest = parse_manifest(_one_job("flux", "    params: {guidance_scale_flux: 4}\n"))
    (spec,) = expand(manifest)
    assert spec.body["guidance_scale"] == 4
    assert "guidance_scale_flux" not in spec.body
    assert any("renamed to 'guidance_scale'" in w for w in manifest.warnings)
    (same,) = expand(parse_manifest(_one_job("flux", "    params: {guidance_scale: 4}\n")))
    assert same.key == spec.key, "either name makes the same request, so the same job"


def test_rows_of_a_prompts_file_bring_their_own_parameters(
    write_manifest: Write, tmp_path: Path
) -> None:
    rows = [
        {"prompt": f"a lighthouse {n}", "seed": n * 7, "ar": ["1:1", "4:5"][n % 2]}
        for n in range(1000)
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rows.csv").write_text("prompt,seed,aspect_ratio\na fox,42,16:9\nan owl,,1:1\n")
    path = write_manifest("""
version: 1
defaults: {model: krea-2-medium, params: {resolution: 1K}}
jobs:
  - {prompts_file: rows.jsonl, params_from: {seed: seed, aspect_ratio: ar}, seeds: [1, 2]}
  - {prompts_file: rows.csv, params_from: all}
""")
    jobs = list(expand(load_manifest(path)))
    assert len(jobs) == 1000 + 2, "a row's seed replaces the seeds axis; a row without takes it"
    assert [(j.seed, j.body["aspect_ratio"]) for j in jobs[:2]] == [(0, "1:1"), (7, "4:5")]
    assert jobs[1000].seed == 42, "CSV text becomes the parameter's type"
    again = list(expand(load_manifest(path)))
    assert [j.key for j in again] == [j.key for j in jobs], "the same row gives the same key"


def test_a_bad_value_in_a_row_names_the_row(write_manifest: Write, tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("prompt,ar\na fox,16:9\nan owl,7:3\n")
    path = write_manifest("""
version: 1
jobs:
  - prompts_file: rows.csv
    params_from: {aspect_ratio: ar}
    model: krea-2-medium
    params: {resolution: 1K}
""")
    with pytest.raises(ManifestError, match=r"params_from: .*rows\.csv:3: aspect_ratio: '7:3'"):
        load_manifest(path)
    (tmp_path / "rows.csv").write_text("prompt,ratio\na fox,16:9\n")
    with pytest.raises(ManifestError, match="has no column 'ar'"):
        load_manifest(path)


def test_vars_fill_parameter_values() -> None:
    jobs = specs("""
        version: 1
        jobs:
          - prompt: a {animal}
            vars: {animal: [fox, owl], ar: ["16:9", "1:1"], c: [raw]}
            model: krea-2-large
            params: {aspect_ratio: "{ar}", resolution: 1K, creativity: "{c}"}
    """)
    assert [(j.prompt, j.body["aspect_ratio"]) for j in jobs] == [
        ("a fox", "16:9"),
        ("a fox", "1:1"),
        ("a owl", "16:9"),
        ("a owl", "1:1"),
    ]
    with pytest.raises(ManifestError, match=r"params\.aspect_ratio: '7:3' is not one"):
        specs("""
            version: 1
            jobs:
              - prompt: a fox
                vars: {ar: ["16:9", "7:3"]}
                model: krea-2-large
                params: {aspect_ratio: "{ar}", resolution: 1K}
        """)
