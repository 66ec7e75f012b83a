"""Benchmark: requests per second one emulator process sustains for POST and GET.

Usage: python bench/emulator_load.py [--seconds 5] [--connections 32]

Starts `krea-batch serve` in a child process on a free loopback port, then drives it from this
process with aiohttp for a fixed time per phase: submits, then polls of the submitted jobs,
then image downloads (512x512 PNG). The client shares the machine's two cores with the server,
so the figures are a floor for what the server alone could do.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import aiohttp
from emulator_process import emulator_process


async def phase(
    name: str, seconds: float, connections: int, request: Callable[[int], Awaitable[None]]
) -> float:
    counter = itertools.count()
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await request(next(counter))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    rate = done / (time.perf_counter() - started)
    print(f"{name:<10} {done:>7} requests  {rate:>8.0f} req/s")
    return rate


async def drive(url: str, seconds: float, connections: int) -> None:
    headers = {"Authorization": "Bearer bench"}
    connector = aiohttp.TCPConnector(limit=connections)
    job_ids: list[str] = []
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def submit(i: int) -> None:
            body = {"prompt": f"benchmark prompt {i}", "width": 512, "height": 512, "seed": i}
            async with session.post(url + "/generate/image/bfl/flux-1-dev", json=body) as r:
                assert r.status == 200, r.status
                job_ids.append((await r.json())["job_id"])

        async def poll(i: int) -> None:
            async with session.get(f"{url}/jobs/{job_ids[i % len(job_ids)]}") as r:
                assert r.status == 200, r.status
                await r.read()

        async def download(i: int) -> None:
            async with session.get(f"{url}/jobs/{job_ids[i % 64]}") as r:
                image_url = (await r.json())["result"]["urls"][0]
            async with session.get(image_url) as r:
                assert r.status == 200, r.status
                await r.read()

        await phase("POST", seconds, connections, submit)
        await phase("GET job", seconds, connections, poll)
        await phase("download", seconds, connections, download)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with emulator_process("--latency", "fixed:0") as url:
        print(f"emulator at {url}, {args.connections} connections, {args.seconds:g} s per phase")
        asyncio.run(drive(url, args.seconds, args.connections))


if __name__ == "__main__":
    main()
