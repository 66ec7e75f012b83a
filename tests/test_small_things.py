"""Small things a newcomer meets: a template that a shard format ignores, a seed default
that is an example, the seed a server chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.api.remote import RemoteJob
from runner.batch import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.manifest import parse_manifest
from tests.conftest import ROOT
from tests.engine_helpers import FAST


def test_plan_says_a_name_template_names_loose_files_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = str(ROOT / "jobs.example.yaml")
    assert main(["plan", example, "--format", "parquet", "--name-template", "{model}/{key}"]) == 0
    assert (
        "warning: the name template names the files of --format files only: --format parquet "
        "names each image in its shard by its key"
    ) in capsys.readouterr().out
    assert main(["plan", example, "--name-template", "{model}/{key}"]) == 0
    assert "names the files of --format files only" not in capsys.readouterr().out


def test_a_models_seed_default_is_not_an_example_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "flux"]) == 0
    [seed] = [
        line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("seed ")
    ]
    assert seed[-1] == "random"
    assert "3317551338" not in seed


def test_a_seed_the_server_names_is_read_from_its_answer() -> None:
    answer = {"job_id": "j1", "status": "completed", "result": {"urls": ["u"], "seed": 7}}
    assert RemoteJob.from_json(answer).seed == 7
    for odd in (True, -1, 2**32, "7", None):
        assert RemoteJob.from_json({**answer, "result": {"urls": ["u"], "seed": odd}}).seed is None


@pytest.mark.parametrize(
    ("reports", "said"),
    [(True, "(none was sent: the server chose it)"), (False, "did not say which")],
)
async def test_inspect_says_which_seed_the_server_chose_when_it_says(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reports: bool,
    said: str,
) -> None:
    manifest = parse_manifest(
        "version: 1\njobs:\n  - {prompt: a fox, model: flux-1-dev, sizes: [512x512]}\n"
        "run: {poll_interval: 0.02, rate_limit: 1000}\n"
    )
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"), report_seed=reports)
    async with run_emulator(config) as emu:
        out = tmp_path / "out"
        await run_batch(manifest, out, api_base=emu.url, token="t", options=FAST)
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["seed"] is None
    image = str(out / record["files"][0]["path"])
    assert main(["inspect", image]) == 0
    [seed] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed:")]
    assert said in seed
    if reports:
        assert seed.split()[1] == "3317551338"  # the emulator draws it from the model's default
