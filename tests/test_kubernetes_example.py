"""examples/kubernetes as Kubernetes reads it."""

from __future__ import annotations

from pathlib import Path

import yaml

from runner.sharding import parse_shard

KUBERNETES = Path(__file__).resolve().parent.parent / "examples" / "kubernetes"


def test_the_kubernetes_example_numbers_its_shards_as_the_job_does() -> None:
    job = yaml.safe_load((KUBERNETES / "indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    command = " ".join(container["args"])
    assert "--shard auto" in command
    assert "${SHARD}" in command  # each pod its own folder
    completions = spec["completions"]
    assert int(env["KREA_BATCH_SHARDS"]) == completions
    shards = {
        parse_shard("auto", {"JOB_COMPLETION_INDEX": str(index), **env})
        for index in range(completions)
    }
    assert shards == {(i, completions) for i in range(1, completions + 1)}
