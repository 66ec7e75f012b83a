"""Benchmark: rerunning a folder whose jobs are all finished (a cron job's second night).

Usage: python bench/rerun.py [--jobs 30000]

Writes a finished folder for a --jobs manifest without running it (a journal with a "done"
event per job), runs it once so that results.jsonl, metadata and the report are written as a
finished run leaves them, then times a second `run_batch` on it against an emulator: it
must send nothing, report every job already done, and return quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import textwrap
import time
from pathlib import Path

from runner.batch import run_batch
from runner.emulator import EmulatorConfig, run_emulator
from runner.engine import EngineOptions
from runner.manifest import expand, load_manifest
from runner.outputs import STATE_DIR


def finished_folder(out: Path, jobs: int) -> Path:
    """A manifest of ``jobs`` prompts (from a prompts file, as a dataset has them) and its
    output folder, every job finished; returns the manifest."""
    (out / "prompts.txt").write_text("".join(f"rerun benchmark {n}\n" for n in range(jobs)))
    manifest = out / "jobs.yaml"
    manifest.write_text(
        textwrap.dedent(f"""
        version: 1
        jobs:
          - prompts_file: prompts.txt
            model: seedream-4
            sizes: [256x256]
        run: {{"max_jobs": {jobs}}}
    """)
    )
    state = out / "out" / STATE_DIR
    state.mkdir(parents=True)
    with (state / "journal.jsonl").open("w") as journal:
        for spec in expand(load_manifest(manifest)):
            record = {"key": spec.key, "status": "completed", "model": spec.model, "files": []}
            journal.write(json.dumps({"e": "done", "k": spec.key, "record": record}) + "\n")
    return manifest


async def rerun(manifest: Path) -> tuple[float, int, int]:
    """Load the manifest and run it again, as `krea-batch run` does; (seconds, done, requests)."""
    async with run_emulator(EmulatorConfig()) as emu:
        started = time.perf_counter()
        options = EngineOptions(handle_signals=False)
        out = manifest.parent / "out"
        result = await run_batch(
            load_manifest(manifest), out, api_base=emu.url, token="bench", options=options
        )
        wall = time.perf_counter() - started
        return wall, result.counts.skipped, emu.emulator.stats.get("requests", 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        manifest = finished_folder(Path(folder), args.jobs)
        first, _, _ = asyncio.run(rerun(manifest))  # writes results, metadata and report once
        wall, skipped, requests = asyncio.run(rerun(manifest))
    print(f"first pass (writes results.jsonl, metadata, report): {first:.2f} s")
    print(f"rerun of a finished {args.jobs:,}-job folder: {wall:.2f} s")
    print(f"already done        {skipped:,}")
    print(f"API requests        {requests}")


if __name__ == "__main__":
    main()
