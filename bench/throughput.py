"""Benchmark: the engine's throughput against the emulator, as a share of the ideal.

Usage: python bench/throughput.py [--jobs 2000] [--latency 1] [--limit 64] [--poll 0.25]

The emulator runs in a child process (`krea-batch serve`) with a fixed job latency and an
account concurrency limit; the runner runs here with concurrency equal to that limit. The
ideal throughput is limit ÷ latency jobs per second: every slot always busy, no overhead.
Prints wall time, jobs/s and its ratio to the ideal, client CPU ms per job, peak memory and
API requests per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
from emulator_process import emulator_process

from runner.batch import run_batch
from runner.engine import EngineOptions
from runner.manifest import parse_manifest


async def stats(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(url + "/_emulator/stats") as r:
        data: dict[str, object] = await r.json()
        return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--poll", type=float, default=0.25)
    args = parser.parse_args()

    flags = ("--latency", f"fixed:{args.latency}", "--concurrency-limit", str(args.limit))
    manifest = parse_manifest(
        textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: throughput benchmark {{n}}
            vars: {{n: {list(range(args.jobs))}}}
            model: seedream-4
            sizes: [256x256]
        run: {{concurrency: {args.limit}, rate_limit: 2000, poll_interval: {args.poll},
               max_jobs: {args.jobs}}}
    """)
    )
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        options = EngineOptions(handle_signals=False)
        result = asyncio.run(run_batch(manifest, out, api_base=url, token="bench", options=options))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        summary = json.loads((Path(out) / "summary.json").read_text())
        server_stats = asyncio.run(stats(url))
    done = result.counts.completed
    ideal = args.limit / args.latency
    rate = done / wall
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"jobs completed      {done} of {args.jobs} (exit code {result.exit_code})")
    print(f"wall time           {wall:.1f} s")
    print(
        f"throughput          {rate:.1f} jobs/s; ideal {ideal:.0f} (limit {args.limit} / "
        f"latency {args.latency:g} s); ratio {rate / ideal:.2f}"
    )
    print(f"client CPU          {cpu * 1000 / max(1, done):.2f} ms per job ({cpu:.1f} s)")
    print(f"peak memory (RSS)   {peak_mib:.0f} MiB")
    print(
        f"API requests/job    {summary['api_requests'] / max(1, done):.2f} "
        f"(+{result.counts.downloads / max(1, done):.2f} downloads)"
    )
    print(
        f"server saw          {server_stats.get('submits')} submits, "
        f"{server_stats.get('polls')} polls, {server_stats.get('refused_429', 0)} 429s, "
        f"{server_stats.get('duplicate_submits')} duplicate submits"
    )


if __name__ == "__main__":
    main()
