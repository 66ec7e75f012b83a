"""The command line: output, exit codes, and no tracebacks for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.cli import main
from tests.conftest import ROOT


def test_plan_prints_jobs_per_model_and_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(ROOT / "jobs.example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "25 jobs" in out
    assert "nano-banana-pro" in out
    assert "total" in out


def test_plan_json_with_first_specs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(ROOT / "jobs.example.yaml"), "--json", "--show", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["jobs"] == sum(m["jobs"] for m in plan["models"])
    assert len(plan["first"]) == 2
    assert plan["first"][0]["endpoint"].startswith("/generate/image/")


def test_a_plan_of_one_job_says_one_job(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest("version: 1\njobs:\n  - {prompt: a, model: flux}\n")
    assert main(["plan", str(path)]) == 0
    assert f"{path}: 1 job\n" in capsys.readouterr().out


def test_a_bad_manifest_exits_2_with_the_location(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest(
        "version: 1\njobs:\n  - {prompt: a, model: flux, params: {width: 4000}}\n"
    )
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err
    assert "jobs[0].params.width: 4000 is above the maximum 2368 for flux-1-dev" in err


def test_max_jobs_flag_overrides_the_cap(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest("version: 1\njobs:\n  - {prompt: a, model: flux, count: 30}\n")
    assert main(["plan", str(path), "--max-jobs", "10"]) == 2
    assert "above the cap of 10" in capsys.readouterr().err
    assert main(["plan", str(path), "--max-jobs", "30"]) == 0


def test_a_bad_flag_value_is_blamed_on_the_flag_not_on_a_line_of_the_manifest(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest("version: 1\njobs:\n  - {prompt: a, model: flux}\n")
    assert main(["plan", str(path), "--lost-answer-wait", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--lost-answer-wait: '-1' is not a duration" in err
    assert str(path) not in err, err


def test_plan_checks_the_names_a_run_with_the_same_flags_would_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = str(ROOT / "jobs.example.yaml")
    assert main(["plan", example, "--name-template", "{model}"]) == 2
    assert "the same file name images/" in capsys.readouterr().err
    assert main(["plan", example, "--name-template", "{model}/{key}"]) == 0


def test_a_deadline_that_has_passed_today_says_it_means_tomorrow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    from runner.cli.main import _deadline

    past = time.strftime("%H:%M", time.localtime(time.time() - 120))
    soon = time.strftime("%H:%M", time.localtime(time.time() + 300))
    with caplog.at_level("WARNING"):
        _deadline(past, None)
        if soon > past:  # not across midnight: later today, said nothing of
            _deadline(soon, None)
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith(f"deadline {past} is tomorrow (in 23h5")
    assert len(said) == 1, said


def test_money_has_cents_and_more_only_below_a_cent_and_reasons_group_without_ids() -> None:
    from runner.cli.status import reason_kind
    from runner.money import dollars, spend_text

    assert [spend_text(usd, 0) for usd in (4.2, 0.546, 2.31, 0.007)] == [
        "$4.20",
        "$0.55",
        "$2.31",
        "$0.007",
    ]
    assert [dollars(p) for p in (0.065, 0.007, 4.2, 12.345)] == [
        "$0.065",
        "$0.007",
        "$4.20",
        "$12.35",
    ]
    gone = "the remote job 0b4e9e71-1012-4dda-8b4e-9e711012dda5 is gone: 404"
    other = "the remote job 2c4e9e71-1012-4dda-8b4e-9e711012dda6 is gone: 404"
    assert reason_kind(gone) == reason_kind(other) == "the remote job … is gone: 404"


def test_models_lists_the_catalog_and_one_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "gpt-image-2" in listing
    seededit = next(line for line in listing.splitlines() if line.startswith("seededit "))
    assert seededit.rstrip().endswith("unpublished")
    assert main(["models", "flux"]) == 0
    flux = capsys.readouterr().out
    assert "\nguidance_scale " in flux
    assert "$0.007 per image" in flux
    assert main(["models", "krea-2-large"]) == 0
    large = capsys.readouterr().out
    assert "$0.06 per image" in large
    assert "K2OV" not in large, "no internal source keys: the overlay keeps them"


def test_an_unknown_model_exits_2_with_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "nano-bananna"]) == 2
    assert "did you mean nano-banana" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "code"),
    [(["plan", "does-not-exist.yaml"], 2), (["frobnicate"], 2), ([], 2), (["--version"], 0)],
)
def test_python_dash_m_exit_codes_without_tracebacks(args: list[str], code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == code
    assert "Traceback" not in result.stderr


def test_run_without_a_token_says_how_to_get_one(
    write_manifest: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("KREA_API_TOKEN", raising=False)
    path = write_manifest("version: 1\njobs:\n  - {prompt: a, model: flux}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "KREA_API_TOKEN" in err
    assert "--emulator" in err
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_an_empty_token_file_is_a_usage_error(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_manifest("version: 1\njobs:\n  - {prompt: a, model: flux}\n")
    (tmp_path / "token").write_text("\n")
    assert main(["run", str(path), "--token-file", str(tmp_path / "token")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_run_with_the_emulator_writes_images_and_results(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_manifest(
        "version: 1\njobs:\n  - {prompt: a small cat, model: seedream-4, sizes: [128x128], "
        "seeds: [1, 2]}\nrun: {poll_interval: 0.05, rate_limit: 100}\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(path), "--emulator", "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "2 completed, 0 failed" in out_text
    assert "report.html" in out_text
    assert len(list((out / "images").glob("*/*.png"))) == 2  # images/0000/KEY.png
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


async def test_serve_answers_the_docs_flow_and_stops_on_sigterm() -> None:
    import asyncio
    import io
    import signal
    import socket

    import aiohttp
    from PIL import Image

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        "serve",
        "--port",
        str(port),
        "--latency",
        "fixed:0",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        while b"listening on" not in await asyncio.wait_for(process.stderr.readline(), 20):
            pass
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer x"}) as session:
            async with session.post(
                url + "/generate/image/bfl/flux-1-dev",
                json={"prompt": "a cat", "width": 512, "height": 512},
            ) as r:
                job_id = (await r.json())["job_id"]
            async with session.get(f"{url}/jobs/{job_id}") as r:
                job = await r.json()
            assert job["status"] == "completed"
            async with session.get(job["result"]["urls"][0]) as r:
                assert Image.open(io.BytesIO(await r.read())).size == (512, 512)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0


def test_a_token_file_others_can_read_gets_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from runner.api.secrets import read_token_file

    path = tmp_path / "token"
    path.write_text("abc\n")
    path.chmod(0o600)
    assert read_token_file(str(path)) == "abc"
    assert not caplog.records
    path.chmod(0o644)
    assert read_token_file(str(path)) == "abc"
    assert "chmod 600" in caplog.text
    assert "abc" not in caplog.text


def test_global_flags_work_after_the_command_too(
    write_manifest: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest(
        "version: 1\njobs:\n  - prompt: a cat\n    model: seedream-4\n    sizes: [512x512]\n"
    )
    assert main(["plan", str(path), "--log-format", "json", "-v"]) == 0
    assert main(["--log-format", "json", "plan", str(path)]) == 0


def test_help_says_what_the_tool_does_and_shows_every_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "text-to-image jobs from a YAML manifest" in text
    assert "examples:" in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 8)", "(default: 10/s)", "(default: 10800 s)", "(default: 2 s)"):
        assert default in text, default
