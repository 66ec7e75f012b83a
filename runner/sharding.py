"""Which shard of a split run this process is: ``--shard I/N``, or from the scheduler.

``--shard I/N`` counts from 1 (``1/4`` … ``4/4``). Schedulers count their tasks from 0, so
``--shard auto`` reads the task id the scheduler gave the process and makes task ``T`` shard
``T+1``: one command line serves every task of a Slurm job array, a Kubernetes Indexed Job or
an AWS Batch array job, and a task rerun alone (``sbatch --array=5``) is still the same shard.

The count comes from ``auto/N`` or KREA_BATCH_SHARDS when given, else from the scheduler where
it knows it (an AWS array's size; a Slurm array numbered 0 to N-1), else from the split the
output folder already records. Jobs are split by key (runner.jobspec.in_shard), so every shard
sees the same split whatever order it runs in. Without a coordinator each shard takes 1/N of
the account's concurrency, so a split into more shards than that is refused; with one
(``--coordinator``) the shards lease what they use from it (runner.engine.coordinator).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runner.errors import UsageError
from runner.integers import parse_int
from runner.textfiles import env_text

SHARDS_VARIABLE = "KREA_BATCH_SHARDS"  # the shard count where the scheduler gives none
_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", re.ASCII)
_AUTO = re.compile(r"\s*auto\s*(?:/\s*([0-9]+)\s*)?", re.ASCII)
SCHEDULERS = (
    "a Slurm job array (SLURM_ARRAY_TASK_ID)",
    "a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)",
    "an AWS Batch array job (AWS_BATCH_JOB_ARRAY_INDEX)",
)
CONVENTION = "I counts from 1 (1/N … N/N)"
FOR_TASK_IDS = "for a scheduler's task id, which counts from 0, use --shard auto"


@dataclass(frozen=True, slots=True)
class Task:
    """What a scheduler says about the task this process is."""

    id: int  # the scheduler's task id, from 0: shard id + 1
    count: int | None  # the shards of the split, where the scheduler knows it
    what: str  # how a person names it: "Slurm array task 5"
    gap: str = ""  # why the count is unknown, where it is


def task_of(shard: tuple[int, int]) -> int:
    """The scheduler's task id of shard I (counting from 0)."""
    return shard[0] - 1


def shard_words(shard: tuple[int, int]) -> str:
    """``shard 6 of 16 (task 5)``: both numberings, so neither is mistaken for the other."""
    return f"shard {shard[0]} of {shard[1]} (task {task_of(shard)})"


def parse_shard(
    text: str,
    environ: Mapping[str, str] | None = None,
    recorded: Callable[[], tuple[int, int] | None] | None = None,
) -> tuple[int, int]:
    """``2/4`` → (2, 4): the second of four shards; ``auto`` or ``auto/N`` asks the scheduler
    that started the process (``environ``); ``recorded`` gives the split the output folder
    holds, for a count the scheduler cannot know."""
    auto = _AUTO.fullmatch(text)
    if auto:
        count = parse_int(auto.group(1), "--shard auto/N") if auto.group(1) else None
        return shard_from_scheduler(environ or {}, count, recorded)
    match = _SHARD.fullmatch(text)
    if not match:
        raise UsageError(f"--shard {text!r}: use I/N, where {CONVENTION}, or auto")
    index, count = (parse_int(match.group(n), f"--shard {text!r}") for n in (1, 2))
    if count < 1:
        raise UsageError(f"--shard {text!r}: N must be at least 1")
    if not 1 <= index <= count:
        hint = f"; {FOR_TASK_IDS}" if index == 0 else ""
        raise UsageError(f"--shard {text!r}: {CONVENTION}{hint}")
    return index, count


def shard_from_scheduler(
    environ: Mapping[str, str],
    count: int | None,
    recorded: Callable[[], tuple[int, int] | None] | None = None,
) -> tuple[int, int]:
    """The shard a scheduler's task is (``count``: from ``auto/N``; see the module docstring)."""
    task = scheduler_task(environ)
    variable = _number(environ, SHARDS_VARIABLE) if SHARDS_VARIABLE in environ else None
    if count is not None and variable is not None and count != variable:
        raise UsageError(f"--shard auto/{count}: {SHARDS_VARIABLE} says {variable} shards")
    total = count if count is not None else variable
    if total is None:
        total = task.count
    if total is None and recorded is not None:
        held = recorded()
        total = held[1] if held is not None else None
    if total is None:
        folder = "" if recorded is None else ", and the output folder records no split yet"
        raise UsageError(
            f"--shard auto: {task.what} says which shard this is, but not of how many"
            f"{task.gap}{folder}: pass --shard auto/N or set {SHARDS_VARIABLE}=N (N: the "
            "shards of the whole split)"
        )
    if total < 1 or task.id >= total:
        raise UsageError(
            f"--shard auto: {task.what} is past a split of {total} shards, whose tasks are "
            f"0 to {total - 1} (task T is shard T+1 of {total}): number the tasks from 0"
        )
    return task.id + 1, total


def scheduler_task(environ: Mapping[str, str]) -> Task:
    """The task a scheduler started this process as (a UsageError: none did)."""
    if "SLURM_ARRAY_TASK_ID" in environ:
        return _slurm(environ)
    if "JOB_COMPLETION_INDEX" in environ:
        index = _number(environ, "JOB_COMPLETION_INDEX")
        return Task(index, None, f"Kubernetes index {index}", " (Kubernetes does not say)")
    if "AWS_BATCH_JOB_ARRAY_INDEX" in environ:
        index = _number(environ, "AWS_BATCH_JOB_ARRAY_INDEX")
        size = "AWS_BATCH_JOB_ARRAY_SIZE"
        count = _number(environ, size) if size in environ else None
        return Task(index, count, f"AWS Batch array index {index}", f" ({size} is not set)")
    raise UsageError(
        "--shard auto: no scheduler started this process; it reads " + "; ".join(SCHEDULERS)
    )


def _slurm(environ: Mapping[str, str]) -> Task:
    """A Slurm array task. The array's extent is the split only when it is numbered 0 to N-1
    with N > 1: a task submitted alone (``--array=5``) or a few of them are a rerun."""
    task = _number(environ, "SLURM_ARRAY_TASK_ID")
    numbers = {
        name: _number(environ, f"SLURM_ARRAY_TASK_{name}")
        for name in ("MIN", "MAX", "STEP", "COUNT")
        if f"SLURM_ARRAY_TASK_{name}" in environ
    }
    first, step, size = numbers.get("MIN", 0), numbers.get("STEP", 1), numbers.get("COUNT")
    last = numbers.get("MAX", size - 1 if size is not None and first == 0 else None)
    whole = first == 0 and step == 1 and last is not None and last >= 1
    whole = whole and (size is None or size == (last or 0) + 1)
    shown = f"{first}-{last}" if last is not None and last != first else str(first)
    return Task(
        task,
        (last or 0) + 1 if whole else None,
        f"Slurm array task {task}",
        f" (its array is {shown}, not a whole split numbered 0 to N-1)",
    )


def check_share(count: int, concurrency: int) -> None:
    """Refuse a split whose shards, each running at least one job, would together run more
    jobs at once than the account's ``concurrency`` with no coordinator to share it."""
    if count > concurrency:
        raise UsageError(
            f"{count} shards cannot share a concurrency of {concurrency}: each runs at least "
            f"one job at once, so {count} would run together on an account that runs "
            f"{concurrency}. Let them share it through Redis (--coordinator redis://HOST:6379, "
            f"then each shard leases what the account has room for), split in at most "
            f"{concurrency} shards, or raise --concurrency to {count} or more if the account "
            "allows that many"
        )


def _number(environ: Mapping[str, str], name: str) -> int:
    return parse_int(env_text(environ, name) or "", f"--shard auto: {name}")
