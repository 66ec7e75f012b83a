"""Helpers for engine tests: small manifests and a checker for an output folder."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.api.backoff import Backoff
from runner.emulator import Emulator
from runner.engine import EngineOptions, RetryPolicy
from runner.manifest import Manifest, parse_manifest
from runner.state.records import ResultRecord, parse_record

# Backoffs about a thousand times shorter, so fault tests take milliseconds, not minutes.
QUICK_RETRY = RetryPolicy(
    errors=Backoff(base=0.001, cap=0.05), throttled=Backoff(base=0.005, cap=0.05)
)
FAST = EngineOptions(handle_signals=False, retry=QUICK_RETRY)


def manifest_text(jobs: int = 20, model: str = "seedream-4", **run: Any) -> str:
    settings = {
        "concurrency": 8,
        "rate_limit": 1000,
        "poll_interval": 0.02,
        "lost_answer_wait": "10ms",
        **run,
    }
    return textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: a tiny test image
            model: {model}
            sizes: [128x128]
            seeds: {list(range(jobs))}
        run: {json.dumps(settings)}
    """)


def small_manifest(jobs: int = 20, **run: Any) -> Manifest:
    return parse_manifest(manifest_text(jobs, **run))


def as_records(raw: Iterable[dict[str, Any]]) -> list[ResultRecord]:
    """Hand-written partial records in their full shape, as a results file would be read."""
    records = [parse_record(r) for r in raw]
    assert all(r is not None for r in records)
    return [r for r in records if r is not None]


def read_results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_folder(out: Path, jobs: int, emulator: Emulator) -> list[dict[str, Any]]:
    """Every job has one record; completed ones have intact files; nothing was paid twice."""
    records = read_results(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == jobs, f"{len(keys)} records, {len(set(keys))} keys"
    for record in records:
        for entry in record["files"]:
            data = (out / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry
            assert len(data) == entry["bytes"]
        if record["status"] == "completed":
            assert record["files"], record
        elif record["status"] == "ambiguous":
            assert record["error"], record  # why: no single candidate, or an unreadable listing
            assert all(e["path"].startswith("images/_unmatched/") for e in record["files"])
        else:
            assert record["status"] == "failed"
            assert record["error"], record
    assert not list((out / "images").rglob("*.part")), "partial downloads left behind"
    assert emulator.paid_twice() == [], "a request was billed twice"
    return records


def paid_beyond_records(records: list[dict[str, Any]], emulator: Emulator) -> int:
    """Jobs the emulator billed that no completed record holds: candidates of ambiguous
    jobs, collected apart (each such image was paid for once more than the manifest asks)."""
    held = {r["job_id"] for r in records if r["status"] == "completed"}
    return emulator.paid() - len(held)


def write_ambiguous_journal(folder: Path, key: str, candidates: list[str]) -> None:
    """A journal in which the one POST of ``key`` lost its answer and matched ``candidates``."""
    import time

    journal = folder / ".krea-batch" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text(
        json.dumps({"e": "submitting", "k": key, "a": 1, "t": time.time()})
        + "\n"
        + json.dumps({"e": "ambiguous", "k": key, "a": 1, "candidates": candidates})
        + "\n"
    )


async def cli_process(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``krea-batch ARGS`` in a child process, with ``env`` over this one's: its exit code and
    its standard error."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await child.communicate()
    assert child.returncode is not None
    return child.returncode, stderr.decode()
