"""Benchmark: plan a large matrix manifest; prints wall time, jobs/s and peak memory.

Usage: python bench/plan_scale.py [JOBS ...]   (default: 10000 50000 100000)

Each size runs in a fresh child process so its peak RSS is its own. Peak traced memory
(tracemalloc, measured in a second pass) shows whether expansion stays flat as jobs grow.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def manifest_text(jobs: int) -> str:
    """A matrix of prompts × vars × models × seeds that expands to exactly ``jobs`` jobs."""
    assert jobs % 100 == 0, "use a multiple of 100"
    seeds = list(range(jobs // 100))
    return f"""
version: 1
defaults:
  sizes: [1024x1024]
jobs:
  - prompt: a {{animal}} painted in {{style}}
    vars:
      animal: [fox, owl, cat, bear, deer]
      style: [watercolor, oil, ink, pastel, charcoal]
    models: [flux-1-dev, seedream-4, imagen-4, ideogram-3]
    seeds: {json.dumps(seeds)}
run: {{max_jobs: {jobs}}}
"""


def measure(jobs: int) -> dict[str, float]:
    from runner.manifest import load_manifest
    from runner.manifest.plan import make_plan

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(manifest_text(jobs))
        start = time.perf_counter()
        cpu = time.process_time()
        plan = make_plan(load_manifest(path))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        assert plan.jobs == jobs, plan.jobs
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tracemalloc.start()
        make_plan(load_manifest(path))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "jobs": jobs,
        "wall_s": wall,
        "cpu_s": cpu,
        "jobs_per_s": jobs / wall,
        "peak_rss_mib": rss_mib,
        "peak_traced_mib": peak / 2**20,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 50_000, 100_000]
    header = ("jobs", "wall s", "cpu s", "jobs/s", "peak RSS MiB", "peak traced MiB")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 7, 6, 8, 13, 16), strict=True)))
    for jobs in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(jobs)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out)
        print(
            f"{r['jobs']:>8,} {r['wall_s']:>7.2f} {r['cpu_s']:>6.2f} {r['jobs_per_s']:>8,.0f} "
            f"{r['peak_rss_mib']:>13.1f} {r['peak_traced_mib']:>16.1f}"
        )


if __name__ == "__main__":
    main()
