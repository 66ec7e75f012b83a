"""examples/kubernetes and the Dockerfile it names, read as Kubernetes and docker would: the
manifests against kubernetes-validate's bundled schemas (strict, offline), and what they say
about signals, exit codes, retries, the Secret and the volumes (there is no docker engine or
cluster here: the Dockerfile is checked against the Makefile it must install like)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from runner.exitcodes import ExitCode
from runner.sharding import parse_shard

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "examples" / "kubernetes"
# backoffLimitPerIndex, podReplacementPolicy and FailIndex are on by default from 1.29.
VERSIONS = [v for v in all_versions() if Version(v) >= Version("1.29")]


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text())
    return data


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def _steps() -> str:
    """The steps written at the top of indexed-job.yaml (its comment lines)."""
    lines = (KUBERNETES / "indexed-job.yaml").read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_versions_checked_reach_the_newest_bundled() -> None:
    assert VERSIONS
    assert VERSIONS[-1] == all_versions()[-1]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifests_pass_kubernetes_validate_strict(version: str) -> None:
    manifests = sorted(KUBERNETES.glob("*.yaml"))
    assert {m.name for m in manifests} == {"indexed-job.yaml", "merge-job.yaml", "pvc.yaml"}
    for manifest in manifests:
        for document in yaml.safe_load_all(manifest.read_text()):
            kubernetes_validate.validate(document, version, strict=True)


def test_the_pods_number_their_shards_as_the_job_does() -> None:
    job = _load("indexed-job.yaml")
    assert job["spec"]["completionMode"] == "Indexed"
    container = _pod(job)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["args"][container["args"].index("--shard") + 1] == "auto"
    assert "/data/out/shard-$(SHARD)" in container["args"]  # each pod its own folder
    completions = job["spec"]["completions"]
    assert int(env["KREA_BATCH_SHARDS"]) == completions
    shards = {
        parse_shard("auto", {"JOB_COMPLETION_INDEX": str(index), **env})
        for index in range(completions)
    }
    assert shards == {(i, completions) for i in range(1, completions + 1)}


def test_krea_batch_is_the_pods_process_and_each_exit_code_has_its_action() -> None:
    job = _load("indexed-job.yaml")
    container = _pod(job)["containers"][0]
    assert "command" not in container  # the image's entrypoint: krea-batch, exec form
    assert container["args"][0] == "run"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",  # an eviction drained: it resumes, and is no failure
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    actions = {}
    for rule in rules[1:]:
        assert rule["onExitCodes"]["containerName"] == container["name"]
        assert rule["onExitCodes"]["operator"] == "In"
        actions.update(dict.fromkeys(rule["onExitCodes"]["values"], rule["action"]))
    assert actions == {
        ExitCode.FAILED: "FailIndex",
        ExitCode.USAGE: "FailIndex",
        ExitCode.FATAL: "FailIndex",
        ExitCode.STOPPED: "Count",  # retried: the retry resumes the folder
    }
    assert set(actions) == set(ExitCode) - {ExitCode.OK}
    assert job["spec"]["backoffLimitPerIndex"] >= 1
    assert job["spec"]["podReplacementPolicy"] == "Failed"


def test_the_grace_period_outlasts_the_drain() -> None:
    pod = _pod(_load("indexed-job.yaml"))
    args = pod["containers"][0]["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_the_images_user_can_read_the_secret() -> None:
    user = dict(_dockerfile())["USER"].split(":")[0]
    for name in ("indexed-job.yaml", "merge-job.yaml"):
        context = _pod(_load(name))["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == int(user), name
        assert context["fsGroup"] == context["runAsGroup"], name
    volumes = {v["name"]: v for v in _pod(_load("indexed-job.yaml"))["volumes"]}
    assert volumes["keys"]["secret"]["defaultMode"] & 0o040  # readable by the fsGroup


def test_every_volume_is_made_by_a_step_written_out() -> None:
    steps = _steps()
    pod = _pod(_load("indexed-job.yaml"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert _load("pvc.yaml")["metadata"]["name"] == claim
    assert "ReadWriteMany" in _load("pvc.yaml")["spec"]["accessModes"]
    assert "kubectl apply -f examples/kubernetes/pvc.yaml" in steps
    merge = {v["name"]: v for v in _pod(_load("merge-job.yaml"))["volumes"]}
    assert merge["data"]["persistentVolumeClaim"]["claimName"] == claim
    config = volumes["config"]["configMap"]
    assert f"kubectl create configmap {config['name']} " in steps
    for item in config["items"]:
        source = re.search(rf"--from-file={re.escape(item['key'])}=(\S+)", steps)
        assert source is not None, item
        assert (ROOT / source.group(1)).is_file()  # the files are the repository's
    assert f"kubectl create secret generic {volumes['keys']['secret']['secretName']} " in steps
    assert "docker build -t registry.example.com/krea-batch:latest ." in steps
    assert all(c["image"] == "registry.example.com/krea-batch:latest" for c in pod["containers"])


def test_the_merge_is_execd_by_the_shell_that_expands_its_glob() -> None:
    container = _pod(_load("merge-job.yaml"))["containers"][0]
    shell, flag, script = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert script.startswith("exec krea-batch merge /data/out/shard-* ")


def test_the_dockerfile_installs_the_package_as_make_run_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(RUN_STAMP): pyproject.toml\n", 1)[1].split("\n\n", 1)[0]
    names = {"$(PYTHON)": "python", "$(VENV)": ".venv", "$(BIN)": ".venv/bin"}
    make_run = []
    for line in recipe.splitlines():
        command = line.strip()
        for name, value in names.items():
            command = command.replace(name, value)
        if command != "touch $@":
            make_run.append(command)
    instructions = _dockerfile()
    runs = [value for kind, value in instructions if kind == "RUN"]
    assert [c.strip() for c in runs[0].split("&&")] == make_run
    workdir = dict(instructions)["WORKDIR"]
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])  # exec form: a JSON list
    assert entrypoint == [f"{workdir}/.venv/bin/krea-batch"]
    copied = " ".join(value for kind, value in instructions if kind == "COPY")
    for needed in ("pyproject.toml", "README.md", "runner"):  # what `pip install -e .` reads
        assert needed in copied
