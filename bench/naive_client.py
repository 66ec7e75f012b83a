"""The yardstick: what a new user writes from the Krea docs in sixty lines.

asyncio, aiohttp and a semaphore: submit, poll every interval, download, write the file.
No journal, no fsync, no retries, no resume: it pays twice after any crash. krea-batch must
never be slower than this (bench/throughput.py --client naive runs it in the same setting).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

TERMINAL = {"completed", "failed", "cancelled"}


async def one_job(
    session: aiohttp.ClientSession,
    base: str,
    body: dict[str, object],
    poll: float,
    out: Path,
    index: int,
) -> bool:
    async with session.post(f"{base}/generate/image/bytedance/seedream-4", json=body) as r:
        job = await r.json()
    while job["status"] not in TERMINAL:
        await asyncio.sleep(poll)
        async with session.get(f"{base}/jobs/{job['job_id']}") as r:
            job = await r.json()
    if job["status"] != "completed":
        return False
    for n, url in enumerate(job["result"]["urls"]):
        async with session.get(url) as r:
            (out / f"{index:06d}-{n}.png").write_bytes(await r.read())
    return True


async def run_naive(base: str, prompts: list[str], concurrency: int, poll: float, out: Path) -> int:
    """Run every prompt with at most ``concurrency`` jobs at once; returns how many completed."""
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": "Bearer naive"}
    connector = aiohttp.TCPConnector(limit=concurrency * 2)

    async def guarded(index: int, prompt: str) -> bool:
        body = {"prompt": prompt, "width": 256, "height": 256}
        async with semaphore:
            return await one_job(session, base, body, poll, out, index)

    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        done = await asyncio.gather(*(guarded(i, p) for i, p in enumerate(prompts)))
    return sum(done)


if __name__ == "__main__":  # python bench/naive_client.py URL JOBS CONCURRENCY POLL OUT
    import sys

    url, jobs, concurrency, poll, out = sys.argv[1:6]
    prompts = [f"throughput benchmark {n}" for n in range(int(jobs))]
    done = asyncio.run(run_naive(url, prompts, int(concurrency), float(poll), Path(out)))
    print(done)
