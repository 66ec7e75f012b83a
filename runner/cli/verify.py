"""``krea-batch verify OUT``: the check (runner.outputs.verify) with a progress bar on a
terminal, and its report as text or JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence

from runner.exitcodes import ExitCode
from runner.outputs.verify import OnProgress, verify
from runner.outputs.verify_findings import MAX_SHOWN, JobRef, Problem, Report, ShardCheck

REPAIR = (
    "run the same `krea-batch run` command again to repair {them}: their images are fetched "
    "again from their jobs, nothing is submitted again"
)


def verify_command(args: argparse.Namespace) -> int:
    with _progress(sys.stderr.isatty()) as on_progress:
        report = verify(args.out, state_dir=args.state_dir, on_progress=on_progress)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=1))
    else:
        print("\n".join(render(report)))
    if report.held_by is not None:
        return ExitCode.USAGE  # read while a run wrote it: nothing proven, nothing marked
    return ExitCode.OK if report.ok else ExitCode.FAILED


@contextlib.contextmanager
def _progress(live: bool) -> Iterator[OnProgress | None]:
    """A bar of the bytes read, on a terminal (rich); nothing elsewhere."""
    if not live:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("verifying {task.description}"),
        BarColumn(bar_width=None),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total or None, description=what[:40])

        yield update


def render(report: Report) -> list[str]:
    """The report as lines: each finding, then what to do (pure)."""
    lines = [f"{p.where}: {_problem_text(p)}" for p in report.problems]
    for check in report.shards:
        if check.state != "ok":
            marked = "; marked damaged in the ledger" if check.marked else ""
            lines.append(f"shards/{check.name}: {check.state}: {_shard_text(check)}{marked}")
    if lines:
        lines.append("")
    lines.extend(_advice(report))
    return lines


def _advice(report: Report) -> Iterator[str]:
    shards = f"{report.images:,} images" + (f" ({report.staged:,} staged)" if report.staged else "")
    if report.shards or report.format != "files":
        shards = f"{_count(len(report.shards), 'shard')}, {shards}"
    if report.held_by is not None:
        yield (
            f"a krea-batch run holds {report.target} ({report.held_by}): read while it writes, "
            "so nothing is proven and nothing was marked in the ledger; verify again once it ends"
        )
    if report.ok:
        yield f"verified {shards}: all as recorded"
        return
    yield f"verified {shards}: {_count(len(report.wrong) + len(report.problems), 'problem')}"
    damaged = [s for s in report.wrong if s.state == "damaged"]
    if damaged:
        yield _damaged_text(report, damaged)
    for state, text in (
        (
            "stray",
            "not in the ledger and named by no record; not marked, since a run would take "
            "{them} as {they} {are}: remove {them} unless {they} {are} this dataset's",
        ),
        ("unreadable", "could not be downloaded: verify again"),
        ("not uploaded", "not at the destination yet: the next run puts {them} there"),
    ):
        found = [s for s in report.wrong if s.state == state]
        if found:
            names = ", ".join(s.name for s in found)
            plural = len(found) > 1
            said = text.format(
                them="them" if plural else "it",
                they="they" if plural else "it",
                are="are" if plural else "is",
            )
            yield f"{_count(len(found), 'shard')} ({names}): {said}"
    staged = [p for p in report.problems if p.kind.startswith("staged")]
    if staged:
        yield (
            f"{_count(len(staged), 'staged image')} missing or changed "
            f"({_jobs([j for p in staged for j in p.jobs])}); "
            + REPAIR.format(them="them" if len(staged) > 1 else "it")
        )
    loose = [p for p in report.problems if p.kind.startswith("image")]
    if loose:
        shown = "; ".join(f"{p.where}: {_jobs(p.jobs)}" for p in loose[:MAX_SHOWN])
        more = f"; and {len(loose) - MAX_SHOWN} more" if len(loose) > MAX_SHOWN else ""
        yield (
            f"{_count(len(loose), 'image')} missing or changed ({shown}{more}); `krea-batch run` "
            "does not fetch loose images again (yet): their jobs are named with their job ids"
        )
    for problem in report.problems:
        if problem.kind in ("two shards", "two records"):
            yield f"{_jobs(problem.jobs)} is in two shards ({problem.where}: {problem.detail})"
    ours = [p for p in report.problems if p.kind == "not ours"]
    if ours:
        yield (
            f"{_count(len(ours), 'record')} name a file that is not this folder's "
            f"({', '.join(p.where for p in ours[:MAX_SHOWN])})"
        )


def _damaged_text(report: Report, damaged: list[ShardCheck]) -> str:
    """The damaged shards, and whether the next run repairs them."""
    details = "; ".join(f"{s.name}: {_shard_text(s)}" for s in damaged[:MAX_SHOWN])
    more = f"; and {len(damaged) - MAX_SHOWN} more" if len(damaged) > MAX_SHOWN else ""
    line = f"{_count(len(damaged), 'shard')} damaged ({details}{more}); "
    unmarked = [s for s in damaged if not (s.marked or s.earlier)]
    them = "them" if len(damaged) > 1 else "it"
    if unmarked and report.held_by is not None:
        return line + f"verify again once the run ends to mark {them} for repair"
    if unmarked:
        why = report.unwritable or "the ledger could not be written"
        return line + f"not marked in the ledger ({why}), so a run would not repair {them}"
    return line + REPAIR.format(them=them)


def _shard_text(check: ShardCheck) -> str:
    jobs = [*check.changed, *check.missing]
    return check.why + (f": {_jobs(jobs)}" if jobs else "")


def _problem_text(problem: Problem) -> str:
    detail = problem.detail.removeprefix("missing").removeprefix("changed").lstrip(": ")
    return problem.kind + (f": {detail}" if detail else "") + f"; {_jobs(problem.jobs)}"


def _jobs(jobs: Sequence[JobRef]) -> str:
    """``jobs K1 (job id J1), K2 (job id J2) and 3 more``."""
    shown = ", ".join(f"{job.key} (job id {job.job_id or 'unknown'})" for job in jobs[:MAX_SHOWN])
    more = f" and {len(jobs) - MAX_SHOWN} more" if len(jobs) > MAX_SHOWN else ""
    return ("job " if len(jobs) == 1 else "jobs ") + shown + more


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")
