"""Benchmark: a dataset-sized run in each output format, against the emulator in a child
process at a short latency.

Usage: python bench/datasets_scale.py [--jobs 200000] [--format files|webdataset|parquet]
       [--shard-size 10000] [--latency 0.05] [--limit 256]

Prints, for the format: jobs/s of the whole run, peak RSS of this process (the runner), the
shard writer's throughput (MB of shards a second of writing, measured around each shard), the
time to plan the manifest and the time to resume the finished run, with both extrapolated
linearly to 1,000,000 jobs beside the figure measured. Then each command a user runs on the
finished folder, as its own process (the CLI, start-up included), with its wall time and peak
RSS: the rerun, `status`, `report` and `verify` (where this version has them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from emulator_process import emulator_process, paid_jobs

from runner.batch import run_batch
from runner.engine import EngineOptions
from runner.manifest import expand, load_manifest
from runner.outputs.writers.shards import ShardWriter

WRITES: list[tuple[float, int]] = []  # (seconds, bytes) of each shard written


def _measure_shards() -> None:
    """Time every shard the writers write (the benchmark's own wrapper, nothing changed)."""
    original = ShardWriter._write_samples

    def timed(self: ShardWriter, number: int, samples: list) -> None:  # type: ignore[type-arg]
        started = time.perf_counter()
        original(self, number, samples)
        final = self.shards / f"{number:05d}{self.suffix}"
        size = final.stat().st_size if final.exists() else 0
        WRITES.append((time.perf_counter() - started, size))

    ShardWriter._write_samples = timed  # type: ignore[method-assign]


def manifest(folder: Path, jobs: int, format: str, shard_size: int, limit: int) -> Path:
    (folder / "prompts.txt").write_text("".join(f"dataset benchmark {n}\n" for n in range(jobs)))
    path = folder / "jobs.yaml"
    path.write_text(
        textwrap.dedent(f"""
        version: 1
        jobs:
          - prompts_file: prompts.txt
            model: seedream-4
            sizes: [128x128]
        run:
          max_jobs: {jobs}
          concurrency: {limit}
          rate_limit: 5000
          poll_interval: 0.1
          format: {format}
          shard_size: {shard_size}
    """)
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument(
        "--format", choices=("files", "webdataset", "parquet"), default="webdataset"
    )
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument(
        "--keep", help="make the folder here and keep it (default: a temporary one)"
    )
    args = parser.parse_args()
    _measure_shards()
    flags = ("--latency", f"fixed:{args.latency}", "--concurrency-limit", str(args.limit))
    options = EngineOptions(handle_signals=False)
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or scratch
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = manifest(Path(folder), args.jobs, args.format, args.shard_size, args.limit)
        started = time.perf_counter()
        planned = sum(1 for _ in expand(load_manifest(path)))
        plan = time.perf_counter() - started
        out = Path(folder) / "out"
        started = time.perf_counter()
        result = asyncio.run(run_batch(path, out, api_base=url, token="bench", options=options))
        wall = time.perf_counter() - started
        paid = paid_jobs(url)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        again = asyncio.run(run_batch(path, out, api_base=url, token="bench", options=options))
        resume = time.perf_counter() - started
        on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        commands = {
            "rerun": ("run", str(path), "--out", str(out), "--api-base", url),
            "status": ("status", str(out)),
            "report": ("report", str(out)),
            "verify": ("verify", str(out)),
        }
        children = {name: child(args_) for name, args_ in commands.items()}
    scale = 1_000_000 / args.jobs
    print(f"format              {args.format} (shards of {args.shard_size:,})")
    print(f"jobs                {result.counts.completed:,} of {planned:,} completed")
    print(f"paid jobs           {paid:,} (billed: completed at the server)")
    print(f"throughput          {result.counts.completed / wall:.1f} jobs/s ({wall:.0f} s)")
    print(f"peak RSS (runner)   {rss:.0f} MiB")
    if WRITES:
        seconds = sum(s for s, _ in WRITES)
        size = sum(b for _, b in WRITES)
        print(
            f"shard writes        {len(WRITES)} shards, {size / 1e6:.0f} MB in {seconds:.1f} s: "
            f"{size / 1e6 / max(seconds, 1e-9):.0f} MB/s"
        )
    print(f"output on disk      {on_disk / 1e6:.0f} MB")
    print(f"plan                {plan:.2f} s; 1M jobs: about {plan * scale:.1f} s")
    print(
        f"resume (finished)   {resume:.2f} s, {again.counts.skipped:,} skipped; "
        f"1M jobs: about {resume * scale:.1f} s"
    )
    for name, (code, seconds, peak) in children.items():
        if code is None:
            print(f"{name:<19} not in this version")
            continue
        print(f"{name:<19} exit {code}, {seconds:.2f} s, peak RSS {peak:.0f} MiB (own process)")


def child(arguments: tuple[str, ...]) -> tuple[int | None, float, float]:
    """Run the CLI in a process of its own: (exit code, wall seconds, peak RSS in MiB); the
    exit code is None where this version has no such command."""
    env = {**os.environ, "KREA_API_TOKEN": "bench"}
    started = time.perf_counter()
    # The child reports its own high-water mark as it exits: a forked child's ru_maxrss
    # starts at the parent's size, which would hide the command's own peak.
    process = subprocess.run(
        [sys.executable, "-c", PEAK_AT_EXIT, *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    seconds = time.perf_counter() - started
    if b"invalid choice" in process.stderr:
        return None, seconds, 0.0
    peak = [line for line in process.stderr.decode().splitlines() if line.startswith("VmHWM")]
    kib = int(peak[-1].split()[1]) if peak else 0
    return process.returncode, seconds, kib / 1024


PEAK_AT_EXIT = """
import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            sys.stderr.write(line)
atexit.register(peak)
sys.argv[0] = "krea-batch"
runpy.run_module("runner", run_name="__main__")
"""


if __name__ == "__main__":
    main()
