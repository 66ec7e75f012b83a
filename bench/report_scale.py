"""Benchmark: the gallery of a 100,000-job folder — writing it, and its first page in Chromium.

Usage: python bench/report_scale.py [--jobs 100000]

Writes the report for --jobs synthetic records (one image shared by all, 1 % failed), then,
where Debian's chromium and playwright are at hand, times the first page from navigation
until its cards are built.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from runner.outputs.report import write_report
from runner.state.records import parse_record


def records(jobs: int) -> Any:
    for n in range(jobs):
        done = n % 100 != 0
        yield parse_record(
            {
                "key": f"{n:016x}",
                "status": "completed" if done else "failed",
                "prompt": f"a lighthouse on a cliff at dusk, number {n}",
                "model": ("flux-1-dev", "seedream-4", "krea-2-medium")[n % 3],
                "seed": n,
                "files": [{"path": "images/one.png"}] if done else [],
                "error": None if done else "moderated",
                "timings": {"seconds": 6.5},
                "params": {"width": 1024, "height": 1024},
            }
        )


async def first_page(page_path: Path) -> float | None:
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        return None
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            started = time.perf_counter()
            await page.goto(page_path.as_uri())
            await page.wait_for_function("document.querySelectorAll('.card').length > 0")
            return time.perf_counter() - started
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "images").mkdir()
        Image.new("RGB", (64, 64), "teal").save(root / "images" / "one.png")
        started = time.perf_counter()
        page = write_report(root, records(args.jobs), {"manifest": "bench.yaml"})
        wall = time.perf_counter() - started
        size = page.stat().st_size + sum(p.stat().st_size for p in (root / "report").iterdir())
        chunks = len(list((root / "report").iterdir()))
        kilobytes = page.stat().st_size / 1e3
        shown = asyncio.run(first_page(page))
    print(f"report of {args.jobs:,} jobs written in {wall:.2f} s")
    print(f"page {kilobytes:,.0f} kB; {chunks} chunks; {size / 1e6:,.1f} MB in all")
    print("first page in chromium " + ("(no chromium)" if shown is None else f"{shown:.2f} s"))


if __name__ == "__main__":
    main()
