"""examples/slurm as written, without a Slurm: the scripts run under bash with the variables
Slurm sets (the real Slurm run is .ci/slurm-example.sh, `make slurm-test`), and submit.sh
against a stand-in sbatch that records what it was asked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from runner.emulator import EmulatorConfig, Latency, run_emulator
from tests.engine_helpers import manifest_text

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "examples" / "slurm"


def _task(task: int, first: int, last: int) -> dict[str, str]:
    return {
        "SLURM_SUBMIT_DIR": str(ROOT),  # sbatch run from the repository's root
        "SLURM_ARRAY_JOB_ID": "41",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(first),
        "SLURM_ARRAY_TASK_MAX": str(last),
        "SLURM_ARRAY_TASK_COUNT": str(last - first + 1),
    }


async def _bash(script: Path, env: dict[str, str]) -> tuple[int, str]:
    child = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        env=env,
        cwd="/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await child.communicate()
    assert child.returncode is not None
    return child.returncode, output.decode()


async def test_the_sbatch_scripts_run_from_a_clone_and_the_merge_names_a_missing_task(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(manifest_text(12))
    out = tmp_path / "out"
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),  # no keys there: KREA_API_TOKEN is used
        "MANIFEST": str(manifest),
        "OUT": str(out),
        "KREA_API_TOKEN": "the-account",
        "KREA_BATCH": f"{sys.executable} -m runner",
        "PYTHONPATH": str(ROOT),
    }
    async with run_emulator(EmulatorConfig(latency=Latency.parse("fixed:0.01"))) as emu:
        env = {**base, "KREA_API_BASE": emu.url}
        code, log = await _bash(SLURM / "krea-batch.sbatch", {**env, **_task(1, 0, 1)})
        assert code == 0, log
        assert "array 41 task 1, start 1" in log
        code, log = await _bash(SLURM / "merge.sbatch", {**env, "SLURM_SUBMIT_DIR": str(ROOT)})
        assert code == 3, log
        assert "shard 1 of 2 (task 0) is missing" in log
        assert not (out / "merged").exists()
        code, log = await _bash(SLURM / "krea-batch.sbatch", {**env, **_task(0, 0, 1)})
        assert code == 0, log
        code, log = await _bash(SLURM / "merge.sbatch", {**env, "SLURM_SUBMIT_DIR": str(ROOT)})
        assert code == 0, log
        stats = emu.emulator.snapshot()
    lines = (out / "merged" / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["key"] for r in records}) == len(records) == 12
    assert stats["submits"] == 12
    assert stats["duplicate_submits"] == 0


def test_without_keys_or_a_token_the_task_says_where_they_go(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "OUT": str(tmp_path / "out"),
        **_task(0, 0, 1),
    }
    run = subprocess.run(
        ["bash", str(SLURM / "krea-batch.sbatch")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert f"no keys: put them in {tmp_path}/.config/krea-batch/keys" in run.stderr
    assert not (tmp_path / "out").exists()


def _krea_batch_of(repo: Path) -> subprocess.CompletedProcess[str]:
    script = f'REPO={repo}; source {SLURM}/env.sh; echo "$PYTHONPATH"; echo "${{krea_batch[*]}}"'
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)


def test_the_scripts_find_krea_batch_in_the_clone(tmp_path: Path) -> None:
    (tmp_path / "runner").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    found = _krea_batch_of(tmp_path)
    assert found.returncode == 0
    assert found.stdout.split("\n")[:2] == [str(tmp_path), "python3 -m runner"]
    venv = tmp_path / ".venv" / "bin" / "krea-batch"  # what `make install-run` makes
    venv.parent.mkdir(parents=True)
    venv.write_text("#!/bin/sh\n")
    venv.chmod(0o755)
    assert _krea_batch_of(tmp_path).stdout.split("\n")[1] == str(venv)
    elsewhere = _krea_batch_of(tmp_path / "runner")
    assert elsewhere.returncode == 2
    assert "is not the krea-batch repository: submit from its root, or set REPO" in (
        elsewhere.stderr
    )


def test_submit_sh_makes_the_log_folder_and_queues_the_merge_after_the_array(
    tmp_path: Path,
) -> None:
    bin = tmp_path / "bin"
    bin.mkdir()
    calls = tmp_path / "calls"
    sbatch = bin / "sbatch"  # a stand-in: records its arguments, answers a job id
    sbatch.write_text(f'#!/bin/sh\necho "$*" >>{calls}\nwc -l <{calls}\n')
    sbatch.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": f"{bin}:{os.environ['PATH']}", "HOME": str(tmp_path), "OUT": str(out)}
    run = subprocess.run(
        ["bash", str(SLURM / "submit.sh"), "--array=3,5"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (out / "logs").is_dir()
    array, merge = calls.read_text().splitlines()
    assert f"--output={out}/logs/krea-batch-%A_%a.log --array=3,5" in array
    assert array.endswith(f"{SLURM}/krea-batch.sbatch")
    assert "--dependency=afterany:1" in merge
    assert merge.endswith(f"{SLURM}/merge.sbatch")
    assert "array job 1, merge job 2 after it" in run.stdout


def test_the_slurm_scripts_are_valid_shell_and_say_how_to_run_them() -> None:
    for script in sorted(SLURM.iterdir()):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False)
        assert checked.returncode == 0, (script, checked.stderr)
    sbatch = (SLURM / "krea-batch.sbatch").read_text()
    assert "bash examples/slurm/submit.sh" in sbatch
    assert "sbatch examples/slurm/submit.sh" not in sbatch
    assert "--shard auto" in sbatch
    assert "#SBATCH --array=0-" in sbatch
    assert "#SBATCH --open-mode=append" in sbatch  # a requeued task's log is kept
    for script in ("krea-batch.sbatch", "merge.sbatch"):
        directives = [
            line for line in (SLURM / script).read_text().splitlines() if line.startswith("#SBATCH")
        ]
        assert not [d for d in directives if "--output" in d or "--error" in d], script
