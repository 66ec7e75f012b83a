"""Benchmark: how fast the emulator's GET /jobs answers on a large account.

Usage: python bench/listing.py [--jobs 10000] [--repeat 50]

Starts `krea-batch serve` in a child process, submits --jobs long-running jobs, then times
listings: the newest page, a page from a cursor in the middle, a status filter that matches
nothing (the worst case: every job is looked at) and a types filter. Prints the median and
95th percentile of each, in milliseconds, round trip over loopback included.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from emulator_process import emulator_process

BODY = {"prompt": "listing benchmark", "width": 256, "height": 256}
ENDPOINT = "/generate/image/bytedance/seedream-4"


async def submit_all(session: aiohttp.ClientSession, url: str, jobs: int) -> list[str]:
    created: list[str] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            async with session.post(url + ENDPOINT, json=BODY) as response:
                created.append((await response.json())["created_at"])

    await asyncio.gather(*(worker(jobs // 16 + (i < jobs % 16)) for i in range(16)))
    return sorted(created)


async def timed(session: aiohttp.ClientSession, url: str, params: dict[str, str], n: int) -> str:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url + "/jobs", params=params) as response:
            await response.read()
            assert response.status == 200, await response.text()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[int(0.95 * (len(times) - 1))]
    return f"median {statistics.median(times):6.2f} ms   p95 {p95:6.2f} ms"


async def bench(url: str, jobs: int, repeat: int) -> None:
    headers = {"Authorization": "Bearer bench"}
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.perf_counter()
        created = await submit_all(session, url, jobs)
        print(f"submitted {jobs} jobs in {time.perf_counter() - started:.1f} s")
        middle = created[len(created) // 2]
        cases = {
            "newest 100": {"limit": "100"},
            "newest 1000": {"limit": "1000"},
            "100 from a cursor mid-way": {"limit": "100", "cursor": middle},
            "status=completed (none match)": {"limit": "100", "status": "completed"},
            "types=bytedance": {"limit": "100", "types": "bytedance"},
        }
        for name, params in cases.items():
            print(f"{name:32} {await timed(session, url, params, repeat)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with emulator_process("--latency", "fixed:100000") as url:
        asyncio.run(bench(url, args.jobs, args.repeat))


if __name__ == "__main__":
    main()
