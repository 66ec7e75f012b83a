"""Benchmark: krea-batch against the naive script, each a whole process, start-up included.

Usage: python bench/versus_naive.py [--rows short,distant,backlog] [--repeat 1]

Each row serves one emulator (a child process), then runs the naive script of
bench/naive_client.py and `krea-batch run` as child processes against it, one after the other,
each into its own folder. Wall time runs from starting the process to its exit, and CPU is
the child's own user + system time (``os.wait4``): imports, the finishing stage and the
report included, as a user comparing tools would time them.

    short     1,000 jobs of 1 s, account limit 64, poll 0.25 s, no round trip
    distant   600 jobs of 2 s, 150 ms round trip, 429 past the limit, poll 0.5 s
    backlog   the same, the server queues past the limit; krea-batch --concurrency 96
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from emulator_process import emulator_process, paid_jobs

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    jobs: int
    latency: float
    poll: float
    rtt: float
    overflow: str
    concurrency: int  # krea-batch's; the naive script always holds the limit
    limit: int = 64


ROWS = {
    "short": Row(1000, 1.0, 0.25, 0.0, "429", 64),
    "distant": Row(600, 2.0, 0.5, 0.15, "429", 64),
    "backlog": Row(600, 2.0, 0.5, 0.15, "backlog", 96),
}


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s, exit code) of a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, child.returncode


def manifest(row: Row, folder: Path, extra: str = "") -> Path:
    path = folder / "bench.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        jobs:
          - prompt: throughput benchmark {{n}}
            vars: {{n: {list(range(row.jobs))}}}
            model: seedream-4
            sizes: [256x256]
        run:
          concurrency: {row.concurrency}
          rate_limit: 2000
          poll_interval: {row.poll}
        """)
        + extra
    )
    return path


def run_row(name: str, row: Row) -> None:
    flags = (
        *("--latency", f"fixed:{row.latency}", "--concurrency-limit", str(row.limit)),
        *("--overflow", row.overflow, "--rtt", str(row.rtt)),
    )
    ideal = row.limit / row.latency
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        naive_out, ours_out = folder / "naive", folder / "ours"
        naive_out.mkdir()
        naive = [sys.executable, str(HERE / "naive_client.py"), url, str(row.jobs)]
        naive += [str(row.limit), str(row.poll), str(naive_out)]
        ours = [sys.executable, "-m", "runner", "run", str(manifest(row, folder))]
        ours += ["--api-base", url, "--out", str(ours_out)]
        env = {**os.environ, "KREA_API_TOKEN": "bench"}
        for client, command in (("naive script", naive), ("krea-batch", ours)):
            before = paid_jobs(url)
            wall, cpu, code = timed(command, env)
            done = paid_jobs(url) - before  # completed at the server: billed
            share = done / wall / ideal
            print(
                f"{name:8} {client:13} {share:.2f} of ideal  {cpu * 1000 / max(1, done):5.2f} ms "
                f"CPU/job  {wall:5.1f} s  {done}/{row.jobs} paid  exit {code}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.repeat):
        for name in args.rows.split(","):
            run_row(name, ROWS[name])


if __name__ == "__main__":
    main()
