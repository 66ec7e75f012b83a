"""Benchmark: the shards of one manifest on one account, run a few at a time (issue #29, item 5).

Usage: python bench/shared_account.py [--jobs 960] [--latency 2] [--shards 16] [--at-once 4]
                                      [--limit 16] [--budget-share 0.4] [--no-budget]
                                      [--no-static]

One emulator account runs --limit jobs at once and answers 429 past them (`krea-batch serve
--concurrency-limit`, its default overflow); --shards processes (`krea-batch run --shard I/N`,
each a child process, start-up included) run --at-once at a time, as a Slurm array throttled
with `%4` runs them. Twice, each time on a fresh emulator:

  static       no coordinator: each shard takes 1/N of --concurrency, --rate-limit and --budget
  coordinator  --coordinator redis://… (Debian's redis-server, started here): each shard leases
               what the account has room for

For each: jobs/s over the whole round (first start to last exit) against the account's ideal
(limit / latency), 429s from the account's limit, submits and images billed against the jobs
(paid twice: none). Then the same two with one --budget of --budget-share of the jobs' price
plus half a job: what was spent, and the overshoot in jobs' prices (the issue asks: at most
one). Needs redis-server (apt-get install redis-server) and the redis extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from emulator_process import emulator_process, free_port

from runner.manifest import expand, load_manifest


@dataclass(frozen=True)
class Round:
    wall: float
    codes: list[int]
    stats: dict[str, Any]


@contextlib.contextmanager
def redis_process() -> Iterator[str]:
    """Debian's redis-server on a free port, no persistence; yields its URL."""
    program = shutil.which("redis-server")
    if program is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        words = [word for name, value in options.items() for word in (f"--{name}", value)]
        server = subprocess.Popen(
            [program, *words, "--dir", folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert server.stdout is not None
        for line in server.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            sys.exit("redis-server did not start")
        drain = threading.Thread(target=server.stdout.read, daemon=True)  # a full pipe blocks it
        drain.start()
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)
            drain.join()


async def emulator_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/_emulator/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


async def shards_round(
    manifest: Path, out: Path, url: str, args: argparse.Namespace, extra: list[str]
) -> Round:
    """Every shard once, --at-once at a time; the wall time of the whole round."""
    slots = asyncio.Semaphore(args.at_once)
    codes: list[int] = []
    environ = {**os.environ, "KREA_API_TOKEN": "the-account"}
    environ.pop("KREA_BATCH_COORDINATOR", None)  # the static round has none

    async def shard(index: int) -> None:
        async with slots:
            child = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "runner", "run", str(manifest), "--api-base", url),
                *("--shard", f"{index}/{args.shards}", "--out", str(out / f"shard-{index}")),
                *extra,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=environ,
            )
            codes.append(await child.wait())

    started = time.perf_counter()
    await asyncio.gather(*(shard(index) for index in range(1, args.shards + 1)))
    return Round(time.perf_counter() - started, codes, await emulator_stats(url))


def one_round(folder: Path, name: str, args: argparse.Namespace, extra: list[str]) -> Round:
    flags = ["--latency", f"fixed:{args.latency}", "--concurrency-limit", str(args.limit)]
    with emulator_process(*flags, "--rtt", str(args.rtt)) as url:
        return asyncio.run(shards_round(folder / "jobs.yaml", folder / name, url, args, extra))


def report(name: str, run: Round, args: argparse.Namespace) -> None:
    stats = run.stats
    done = int(stats.get("jobs_by_status", {}).get("completed", 0))
    ideal = args.limit / args.latency
    print(
        f"{name:<12} {done / run.wall:6.2f} jobs/s = {done / run.wall / ideal:.2f} of the "
        f"account's ideal {ideal:g} ({args.limit} / {args.latency:g} s); {done} jobs in "
        f"{run.wall:.1f} s; 429s from the limit {stats.get('refused_429', 0)}; submits "
        f"{stats.get('submits', 0)}, paid twice {stats.get('paid_twice', 0)}; exit codes "
        f"{sorted(set(run.codes))}"
    )


def budget_report(name: str, run: Round, budget: float, price: float) -> None:
    spent = float(run.stats.get("credits_spent", 0.0))
    print(
        f"{name:<12} budget {budget:g} CU: spent {spent:g} CU ({spent / budget:.2f} of it), "
        f"overshoot {(spent - budget) / price:+.2f} jobs' price, "
        f"{run.stats.get('jobs_by_status', {}).get('completed', 0)} jobs; paid twice "
        f"{run.stats.get('paid_twice', 0)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=960)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per job (fixed)")
    parser.add_argument("--rtt", type=float, default=0.02, help="round trip of each request")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--at-once", type=int, default=4)
    parser.add_argument("--limit", type=int, default=16, help="the account's jobs at once")
    parser.add_argument("--budget-share", type=float, default=0.4)
    parser.add_argument("--no-budget", action="store_true", help="skip the budget rounds")
    parser.add_argument("--no-static", action="store_true", help="skip the static split's rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_process() as redis:
        folder = Path(tmp)
        manifest = folder / "jobs.yaml"
        manifest.write_text(
            textwrap.dedent(f"""\
            version: 1
            jobs:
              - prompt: shared account benchmark {{n}}
                vars: {{n: {list(range(args.jobs))}}}
                model: seedream-4
                sizes: [256x256]
            run:
              concurrency: {args.limit}
              rate_limit: 400
              poll_interval: 0.5
              max_jobs: {args.jobs}
            """)
        )
        print(
            f"{args.shards} shards of {args.jobs} jobs of {args.latency:g} s, {args.at_once} at "
            f"a time, on one account of {args.limit} jobs at once (429 past them)"
        )
        if not args.no_static:
            report("static", one_round(folder, "static", args, []), args)
        shared = ["--coordinator", redis]
        report("coordinator", one_round(folder, "coordinated", args, shared), args)
        if args.no_budget:
            return
        price = next(iter(expand(load_manifest(manifest)))).units or 1.0
        budget = round((int(args.jobs * args.budget_share) + 0.5) * price, 6)
        money = ["--budget", f"{budget:g}cu"]
        if not args.no_static:
            static = one_round(folder, "static-budget", args, money)
            budget_report("static", static, budget, price)
        coordinated = one_round(folder, "coordinated-budget", args, [*money, *shared])
        budget_report("coordinator", coordinated, budget, price)


if __name__ == "__main__":
    main()
