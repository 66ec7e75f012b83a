"""Benchmark: the engine's throughput against the emulator, as a share of the ideal.

Usage: python bench/throughput.py [--jobs 2000] [--latency 1] [--limit 64] [--poll 0.25]
       [--rtt 0.15] [--overflow 429|backlog] [--concurrency N] [--submit-concurrency N]
       [--poll-mode list|job] [--webhooks [--webhook-repeats 2] [--webhook-drop-rate 0.1]]

The emulator runs in a child process (`krea-batch serve`) with a fixed job latency, an account
concurrency limit and, with --rtt, a round trip added to every request (a distant API); the
runner runs here with --concurrency jobs in flight (default: the limit). With
--overflow backlog the server queues jobs past the limit instead of refusing them. The ideal
throughput is limit ÷ latency jobs per second: every slot always busy, no overhead. Beside it
the best any client could do (bench/bound.py): a simulated perfect client under the same
latency draws and request limit. Prints wall time, jobs/s and both ratios, client CPU ms per
job, peak memory and API requests per job; with --webhooks also how soon after each job's
end its download began.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
from bound import best_possible_wall
from emulator_process import emulator_process, free_port
from naive_client import run_naive

from runner.api.remote import parse_time
from runner.api.webhooks import WebhookSettings
from runner.batch import run_batch
from runner.emulator.config import Latency
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
    parser.add_argument("--rtt", type=float, default=0.0, help="seconds added to each request")
    parser.add_argument("--overflow", choices=("429", "backlog"), default="429")
    parser.add_argument("--concurrency", type=int, help="the runner's jobs in flight")
    parser.add_argument("--submit-concurrency", type=int, help="the runner's POSTs in flight")
    parser.add_argument(
        "--latency-dist", help="the emulator's latency instead, e.g. lognormal:6,0.5"
    )
    parser.add_argument(
        "--server-rate-limit", type=float, help="API requests per second the server allows"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=2000.0, help="the runner's request rate (10: default)"
    )
    parser.add_argument(
        "--client",
        choices=("krea-batch", "naive"),
        default="krea-batch",
        help="naive: the sixty-line script of bench/naive_client.py, as a yardstick",
    )
    parser.add_argument("--poll-mode", choices=("auto", "list", "job"), default="auto")
    parser.add_argument("--webhooks", action="store_true", help="jobs report their end by webhook")
    parser.add_argument("--webhook-repeats", type=int, default=1)
    parser.add_argument("--webhook-drop-rate", type=float, default=0.0)
    args = parser.parse_args()
    concurrency = args.concurrency or args.limit
    latency = args.latency_dist or f"fixed:{args.latency}"
    flags = (
        *("--latency", latency, "--concurrency-limit", str(args.limit)),
        *("--overflow", args.overflow, "--rtt", str(args.rtt)),
        *(("--rate-limit", str(args.server_rate_limit)) if args.server_rate_limit else ()),
        *("--webhook-repeats", str(args.webhook_repeats)),
        *("--webhook-drop-rate", str(args.webhook_drop_rate)),
    )
    notice_delays: list[float] = []
    listing: dict[str, int] = {}
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        if args.client == "naive":
            prompts = [f"throughput benchmark {n}" for n in range(args.jobs)]
            done = asyncio.run(run_naive(url, prompts, concurrency, args.poll, Path(out)))
            requests, downloads = None, done
        else:
            done, requests, downloads, listing = run_krea_batch(url, out, args, concurrency)
            notice_delays = delays_to_notice(Path(out))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_stats = asyncio.run(stats(url))
    ideal = args.limit / args.latency
    rate = done / wall
    submit_rate = min(args.rate_limit, args.server_rate_limit or args.rate_limit)
    best = best_possible_wall(args.jobs, args.limit, Latency.parse(latency), submit_rate)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"client              {args.client}")
    print(f"jobs completed      {done} of {args.jobs}")
    print(f"wall time           {wall:.1f} s")
    print(
        f"throughput          {rate:.1f} jobs/s; ideal {ideal:.0f} (limit {args.limit} / "
        f"latency {args.latency:g} s); ratio {rate / ideal:.2f}"
    )
    print(
        f"best possible       {best:.1f} s (a perfect client, simulated); "
        f"this run took {wall / best:.2f}× that"
    )
    print(
        f"setup               {latency}, rtt {args.rtt:g} s, overflow {args.overflow}, "
        f"concurrency {concurrency}, poll {args.poll:g} s, poll mode {args.poll_mode}"
        + (
            f", webhooks (repeats {args.webhook_repeats}, drop {args.webhook_drop_rate:g})"
            if args.webhooks
            else ""
        )
    )
    print(f"client CPU          {cpu * 1000 / max(1, done):.2f} ms per job ({cpu:.1f} s)")
    print(f"peak memory (RSS)   {peak_mib:.0f} MiB")
    api_requests = server_stats.get("requests", 0)
    assert isinstance(api_requests, int)
    print(
        f"API requests/job    {api_requests / max(1, done):.2f} "
        f"(+{downloads / max(1, done):.2f} downloads)"
        + ("" if requests is None else f"; the runner counted {requests / max(1, done):.2f}")
    )
    print(
        f"paid jobs           {server_stats.get('paid', 0)} billed (completed at the server) "
        f"for {done} jobs; {server_stats.get('cancels', 0)} cancelled unbilled"
    )
    print(
        f"server saw          {server_stats.get('submits', 0)} submits, "
        f"{server_stats.get('polls', 0)} polls, {server_stats.get('lists', 0)} lists, "
        f"{server_stats.get('refused_429', 0)} 429s at the limit, "
        f"{server_stats.get('rate_limited', 0)} 429s on the request rate, "
        f"{server_stats.get('duplicate_submits', 0)} duplicate submits"
    )
    if listing:
        print(
            f"listing             {listing['passes']} passes, {listing['pages']} pages, "
            f"{listing['seen_ended']} ends seen; polled alone: {listing['alone']} missed, "
            f"{listing['beyond_reach']} past its reach"
        )
    if notice_delays:
        print(
            f"end to download     mean {statistics.mean(notice_delays):.3f} s, "
            f"median {statistics.median(notice_delays):.3f} s, "
            f"max {max(notice_delays):.3f} s (completed_at to noticed_at; "
            f"webhooks: {server_stats.get('webhooks_sent', 0)} sent, "
            f"{server_stats.get('webhooks_dropped', 0)} dropped)"
        )


def delays_to_notice(out: Path) -> list[float]:
    """Seconds from each job's end on the server to the start of its download."""
    delays = []
    for line in (out / "results.jsonl").read_text().splitlines():
        timings = json.loads(line).get("timings", {})
        ended, noticed = (
            parse_time(timings.get("completed_at")),
            parse_time(timings.get("noticed_at")),
        )
        if ended is not None and noticed is not None:
            delays.append(noticed - ended)
    return delays


def run_krea_batch(
    url: str, out: str, args: argparse.Namespace, concurrency: int
) -> tuple[int, int, int, dict[str, int]]:
    """Run the benchmark batch with krea-batch: (completed, API requests, downloads, listing)."""
    run = {
        "concurrency": concurrency,
        "rate_limit": args.rate_limit,
        "poll_interval": args.poll,
        "poll_mode": args.poll_mode,
    }
    if args.submit_concurrency:
        run["submit_concurrency"] = args.submit_concurrency
    manifest = parse_manifest(
        textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: throughput benchmark {{n}}
            vars: {{n: {list(range(args.jobs))}}}
            model: seedream-4
            sizes: [256x256]
        run: {json.dumps({**run, "max_jobs": args.jobs})}
    """)
    )
    options = EngineOptions(handle_signals=False)
    webhook = None
    if args.webhooks:
        port = free_port()
        webhook = WebhookSettings(f"http://127.0.0.1:{port}/krea", "127.0.0.1", port)
    result = asyncio.run(
        run_batch(manifest, out, api_base=url, token="bench", options=options, webhook=webhook)
    )
    summary = json.loads((Path(out) / "summary.json").read_text())
    completed, downloads = result.counts.completed, result.counts.downloads
    return completed, summary["api_requests"], downloads, summary.get("listing", {})


if __name__ == "__main__":
    main()
