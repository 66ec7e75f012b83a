"""Benchmark: a pool of keys against an emulator with one account per key.

Usage: python bench/pool.py [--scenario pool|done-when]

    pool       8 keys of 64 jobs at once each, lognormal latency (median 5 s, sigma 0.5),
               5,000 jobs, 150 ms round trip, 50 requests a second per account
    done-when  4 keys of 16 jobs at once plus one revoked key, 2 s jobs, 50 ms round trip,
               640 jobs (the issue's acceptance run: at least 0.80 of 4 x 16 / 2 jobs/s)

The emulator runs in a child process (`krea-batch serve --token-file`, one account per token)
and krea-batch runs as a child process too (`run --token-file`), so wall time and CPU are the
whole process's, start-up included. Prints the share of the ideal (keys x limit / median),
the best a perfect client could do (bench/bound.py), CPU per job, requests per job, peak RSS,
requests sent with the wrong key, and each account's share of the jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bound import best_possible_wall
from emulator_process import emulator_process

from runner.api.keys import fingerprint
from runner.emulator.config import Latency


@dataclass(frozen=True)
class Scenario:
    keys: int
    limit: int  # jobs at once per account
    latency: str
    median: float
    jobs: int
    rtt: float
    server_rate: float | None  # requests a second per account
    revoked: int = 0  # keys in the pool the server refuses


SCENARIOS = {
    "pool": Scenario(8, 64, "lognormal:5,0.5", 5.0, 5000, 0.15, 50.0),
    "done-when": Scenario(4, 16, "fixed:2", 2.0, 640, 0.05, None, revoked=1),
}


async def stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/_emulator/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


def run(name: str, scenario: Scenario) -> None:
    keys = [f"bench-key-{n}" for n in range(scenario.keys)]
    revoked = [f"revoked-key-{n}" for n in range(scenario.revoked)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        accounts, pool = folder / "accounts", folder / "pool"
        accounts.write_text("\n".join(keys) + "\n")
        pool.write_text("\n".join(keys + revoked) + "\n")
        accounts.chmod(0o600)
        pool.chmod(0o600)
        flags = [
            *("--token-file", str(accounts), "--latency", scenario.latency),
            *("--concurrency-limit", str(scenario.limit), "--rtt", str(scenario.rtt)),
        ]
        if scenario.server_rate:
            flags += ["--rate-limit", str(scenario.server_rate)]
        rate = scenario.server_rate or 2000
        manifest = folder / "jobs.yaml"
        manifest.write_text(
            textwrap.dedent(f"""\
            version: 1
            jobs:
              - prompt: pool benchmark {{n}}
                vars: {{n: {list(range(scenario.jobs))}}}
                model: seedream-4
                sizes: [256x256]
            run:
              concurrency: {scenario.limit}
              rate_limit: {rate}
              max_jobs: {scenario.jobs}
            """)
        )
        with emulator_process(*flags) as url:
            command = [sys.executable, "-m", "runner", "run", str(manifest)]
            command += ["--api-base", url, "--token-file", str(pool), "--out", str(folder / "out")]
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - started
            code = os.waitstatus_to_exitcode(status)
            assert child.stderr is not None
            errors = child.stderr.read().decode()
            seen = asyncio.run(stats(url))
    done = int(seen.get("jobs_by_status", {}).get("completed", 0))
    cpu = usage.ru_utime + usage.ru_stime
    ideal = scenario.keys * scenario.limit / scenario.median
    best = best_possible_wall(
        scenario.jobs,
        scenario.keys * scenario.limit,
        Latency.parse(scenario.latency),
        scenario.keys * rate,
    )
    print(f"scenario            {name}: {scenario}")
    print(f"exit code           {code}; {done} of {scenario.jobs} jobs completed")
    print(f"wall time           {wall:.1f} s (best possible {best:.1f} s: {wall / best:.2f}×)")
    print(
        f"throughput          {done / wall:.1f} jobs/s; ideal {ideal:.0f} "
        f"({scenario.keys} keys × {scenario.limit} / {scenario.median:g} s); "
        f"share {done / wall / ideal:.2f}"
    )
    print(f"client CPU          {cpu * 1000 / max(1, done):.2f} ms per job (whole process)")
    print(f"peak memory (RSS)   {usage.ru_maxrss / 1024:.0f} MiB")
    requests = int(seen.get("requests", 0))
    print(f"API requests/job    {requests / max(1, done):.2f}")
    print(
        f"wrong key           {seen.get('wrong_account', 0)} requests; "
        f"{seen.get('unauthorized', 0)} refused as unauthorized (the revoked key)"
    )
    per_account = seen.get("accounts", {})
    paid = seen.get("paid_by_account", {})
    shares = [
        f"{fingerprint(k)} {paid.get(fingerprint(k), 0)} paid "
        f"({per_account.get(fingerprint(k), {}).get('submits', 0)} submits)"
        for k in keys
    ]
    print(f"paid jobs           {seen.get('paid', 0)} billed (completed at the server)")
    print(f"paid per key        {', '.join(shares)}")
    print(f"429s at the limit   {seen.get('refused_429', 0)}; rate {seen.get('rate_limited', 0)}")
    if code != 0:
        print(errors[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="pool")
    args = parser.parse_args()
    run(args.scenario, SCENARIOS[args.scenario])


if __name__ == "__main__":
    main()
