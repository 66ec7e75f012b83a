"""Which shard of a split run this process is: ``--shard I/N``, or from the scheduler.

``--shard auto`` reads the index the scheduler gave the process, so one command line serves
every task of a Slurm job array, a Kubernetes Indexed Job or an AWS Batch array job. Shards
are 1-based (``1/4`` … ``4/4``); jobs are split by key (runner.jobspec.in_shard), so every
shard sees the same split whatever order it runs in. No coordinator is involved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from runner.errors import UsageError
from runner.integers import parse_int
from runner.textfiles import env_text

SHARDS_VARIABLE = "KREA_BATCH_SHARDS"  # the shard count where the scheduler gives none
_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", re.ASCII)
_AUTO = re.compile(r"\s*auto\s*(?:/\s*([0-9]+)\s*)?", re.ASCII)
SCHEDULERS = (
    "a Slurm job array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN)",
    f"a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with --shard auto/N or {SHARDS_VARIABLE})",
    "an AWS Batch array job (AWS_BATCH_JOB_ARRAY_INDEX, AWS_BATCH_JOB_ARRAY_SIZE)",
)


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``2/4`` → (2, 4): the second of four shards; ``auto`` or ``auto/N`` asks the scheduler
    that started the process (``environ``)."""
    auto = _AUTO.fullmatch(text)
    if auto:
        count = parse_int(auto.group(1), "--shard auto/N") if auto.group(1) else None
        return shard_from_scheduler(environ or {}, count)
    match = _SHARD.fullmatch(text)
    if not match:
        raise UsageError(f"--shard {text!r}: use I/N, like 2/4, or auto")
    index, count = (parse_int(match.group(n), f"--shard {text!r}") for n in (1, 2))
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def shard_from_scheduler(environ: Mapping[str, str], count: int | None) -> tuple[int, int]:
    """The shard a scheduler's task is, from the variables it sets (``count``: from ``auto/N``)."""
    if "SLURM_ARRAY_TASK_ID" in environ:
        return _slurm(environ, count)
    for variable, size in (
        ("JOB_COMPLETION_INDEX", SHARDS_VARIABLE),
        ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE"),
    ):
        if variable in environ:
            index = _number(environ, variable)
            given = _number(environ, size) if size in environ else None
            total = _agree(count, given, size)
            if total is None:
                raise UsageError(
                    f"--shard auto: {variable} says which shard this is, but not of how many: "
                    f"pass --shard auto/N or set {SHARDS_VARIABLE}"
                )
            return _checked(index + 1, total, variable)
    raise UsageError(
        "--shard auto: no scheduler started this process; it reads " + "; ".join(SCHEDULERS)
    )


def _slurm(environ: Mapping[str, str], count: int | None) -> tuple[int, int]:
    task = _number(environ, "SLURM_ARRAY_TASK_ID")
    first = _number(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
    step = _number(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
    given = (
        _number(environ, "SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in environ else None
    )
    total = _agree(count, given, "SLURM_ARRAY_TASK_COUNT")
    if total is None:
        raise UsageError("--shard auto: SLURM_ARRAY_TASK_COUNT is not set: pass --shard auto/N")
    offset = task - first
    if step < 1 or offset % step:
        raise UsageError(
            f"--shard auto: Slurm array task {task} is not on the array's range from {first} "
            f"by {step}: give the array as a range (--array=0-{total - 1})"
        )
    if "SLURM_ARRAY_TASK_MAX" in environ:
        last = _number(environ, "SLURM_ARRAY_TASK_MAX")
        if (last - first) // step + 1 != total:
            raise UsageError(
                "--shard auto: the Slurm array is a list with gaps, which cannot be numbered "
                f"1 to N: give it as a range (--array=0-{total - 1})"
            )
    return _checked(offset // step + 1, total, "SLURM_ARRAY_TASK_ID")


def _number(environ: Mapping[str, str], name: str) -> int:
    return parse_int(env_text(environ, name) or "", f"--shard auto: {name}")


def _agree(flag: int | None, variable: int | None, name: str) -> int | None:
    if flag is not None and variable is not None and flag != variable:
        raise UsageError(f"--shard auto/{flag}: {name} says {variable} shards")
    return flag if flag is not None else variable


def _checked(index: int, count: int, variable: str) -> tuple[int, int]:
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard auto: {variable} makes shard {index} of {count}")
    return index, count
