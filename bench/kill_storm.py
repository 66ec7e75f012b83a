"""Benchmark: kill -9 storms behind a round trip, and what they leave ambiguous.

Usage: python bench/kill_storm.py [--jobs 1000] [--kills 15] [--rtt 0.1] [--seed 1]
       [--concurrency 32] [--latency uniform:4-12] [--exclusive] [--webhooks]

The emulator (in this process) adds ``--rtt`` to every request, so POSTs are on the wire when
the runner (a child process) is killed; kills come at random submits, listings and downloads.
After the storm one run goes to the end. Prints the jobs paid twice (must be 0), the jobs
left ambiguous, how many of those the server holds no job for (their POST never left: an
ambiguity that cost nothing but a user's attention), the jobs cancelled unbilled, the jobs
billed (completed at the server: what the account pays, unlike submits, some of which end
cancelled) and the wall time. ``--exclusive`` runs with ``--exclusive-account``;
``--webhooks`` has every run take webhooks at one address (the emulator tries a delivery
the receiver did not take again, so a killed runner's jobs reach the next one).

Jobs take 4 to 12 s by default, as Krea's fastest models do (Krea 2 Turbo about 4 s; the
others from ten seconds to a minute). ``--latency uniform:0.5-2 --concurrency 8`` is the
storm as it was first measured: jobs faster than any of Krea's, many of which complete
before a restarted run can cancel them, so an exclusive account cannot settle them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from emulator_process import free_port

from runner.emulator import EmulatorConfig, Latency, run_emulator
from runner.emulator.jobs import body_hash

ROOT = Path(__file__).resolve().parent.parent


def manifest_text(jobs: int, concurrency: int) -> str:
    return textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: a tiny test image
            model: seedream-4
            sizes: [128x128]
            seeds: {list(range(jobs))}
        run: {{concurrency: {concurrency}, rate_limit: 1000, poll_interval: 0.2}}
    """)


async def start(
    manifest: Path, out: Path, url: str, extra: tuple[str, ...] = ()
) -> asyncio.subprocess.Process:
    """The runner in a child process (``extra``: more flags for ``run``)."""
    env = {**os.environ, "KREA_API_TOKEN": "t"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--api-base",
        url,
        *extra,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def kill_once(
    emulator: Any,
    moments: random.Random,
    manifest: Path,
    out: Path,
    url: str,
    extra: tuple[str, ...],
) -> None:
    """One run, killed at the nth submit, listing or download the emulator sees."""
    event = moments.choice(["submit", "submit", "submit", "list", "download"])
    nth, seen = moments.randint(5, 60), 0
    moment = asyncio.Event()

    def watch(kind: str, job: Any) -> None:
        nonlocal seen
        if kind == event:
            seen += 1
            if seen == nth:
                moment.set()

    emulator.observers.append(watch)
    process = await start(manifest, out, url, extra)
    ended = asyncio.create_task(process.wait())
    await asyncio.wait(
        {asyncio.create_task(moment.wait()), ended},
        timeout=120,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if process.returncode is None:
        process.kill()
    await process.wait()
    emulator.observers.remove(watch)


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    moments = random.Random(args.seed)
    config = EmulatorConfig(
        latency=Latency.parse(args.latency),
        rtt=args.rtt,
        seed=args.seed,
        error_rate=0.02,
        # A delivery to a runner killed and not back yet is tried again (at least once).
        webhook_retries=6 if args.webhooks else 0,
    )
    args.port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "jobs.yaml"
        manifest.write_text(manifest_text(args.jobs, args.concurrency))
        out = Path(folder) / "out"
        started = time.monotonic()
        async with run_emulator(config) as emu:
            emulator = emu.emulator
            for _ in range(args.kills):
                await kill_once(emulator, moments, manifest, out, emu.url, flags(args))
            final = await start(manifest, out, emu.url, flags(args))
            await asyncio.wait_for(final.wait(), 600)
            records = [
                json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
            ]
            held = {body_hash(job.body) for job in emulator.store.jobs.values()}
            paid_twice = len(emulator.paid_twice())
            paid = emulator.paid()
            cancels = emulator.stats["cancels"]
            submits = emulator.stats["submits"]
        wall = time.monotonic() - started
    ambiguous = [r for r in records if r["status"] == "ambiguous"]
    never_sent = 0
    for record in ambiguous:
        body = {"prompt": record["prompt"], **record.get("params", {})}
        never_sent += body_hash(body) not in held
    return {
        "jobs": args.jobs,
        "kills": args.kills,
        "rtt_s": args.rtt,
        "concurrency": args.concurrency,
        "completed": sum(r["status"] == "completed" for r in records),
        "ambiguous": len(ambiguous),
        "ambiguous_never_sent": never_sent,
        "exclusive": args.exclusive,
        "webhooks": args.webhooks,
        "paid": paid,  # jobs billed (completed): the jobs, plus ambiguous ones' candidates
        "cancelled_unbilled": cancels,
        "submits": submits,
        "paid_twice": paid_twice,
        "wall_s": round(wall, 1),
    }


def flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The run's flags for the benchmark's options: every run of the storm takes webhooks at
    the same address, as a rerun of the same command would."""
    extra: tuple[str, ...] = ("--exclusive-account",) if args.exclusive else ()
    if args.webhooks:
        extra += ("--webhook-url", f"http://127.0.0.1:{args.port}/krea")
        extra += ("--webhook-listen", f"127.0.0.1:{args.port}")
    return extra


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--rtt", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", default="uniform:4-12", help="the emulator's job times")
    parser.add_argument("--concurrency", type=int, default=32, help="the runner's jobs in flight")
    parser.add_argument(
        "--exclusive", action="store_true", help="run with --exclusive-account (one owner)"
    )
    parser.add_argument(
        "--webhooks", action="store_true", help="each run takes webhooks on a port of its own"
    )
    print(json.dumps(asyncio.run(storm(parser.parse_args()))))


if __name__ == "__main__":
    main()
