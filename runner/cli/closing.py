"""What ``krea-batch run`` says when it ends: the counts and where the files are (stdout),
then why it stopped early and what helps, failed jobs, and what the folder still holds from
earlier runs (stderr). As text for people, or, with ``--log-format json``, one JSON object a
line whose counts are fields."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from runner.cli.logs import json_line
from runner.engine import RunResult
from runner.money import spend_text
from runner.outputs.destination import is_url
from runner.state.figures import Counts
from runner.wording import counted, them, wrap_phrases


@dataclass
class Line:
    """One thing said: its text, its level, and its figures for a JSON line."""

    text: str
    level: str = "info"
    fields: dict[str, Any] = field(default_factory=dict)


def summary_line(result: RunResult, out: str, sharded: bool) -> Line:
    """The counts of the run and where its results are."""
    counts = result.counts
    ambiguous = f", {counts.ambiguous_jobs} ambiguous" if counts.ambiguous_jobs else ""
    if is_url(out) or sharded:
        place, where = ("shards", f"{out}/shards") if sharded else ("images", f"{out}/images")
    else:
        place, where = "gallery", f"{out}/report.html"
    stragglers = f", {counts.stragglers} stragglers resent" if counts.stragglers else ""
    text = (
        f"{counts.completed} completed, {counts.failed} failed{ambiguous}, "
        f"{counts.skipped} already done, {counts.unfinished} unfinished{stragglers}; "
        f"{spend_phrase(result)}\n"
        f"results: {out}/results.jsonl   {place}: {where}"
    )
    fields = {
        "event": "finished",
        "exit_code": result.exit_code,
        "completed": counts.completed,
        "failed": counts.failed,
        "ambiguous": counts.ambiguous_jobs,
        "already_done": counts.skipped,
        "unfinished": counts.unfinished,
        "stragglers": counts.stragglers,
        "cancelled": counts.cancelled,
        "spend_usd": round(counts.spend_usd, 4),
        "spend_units": round(counts.spend_units, 3),
        "results": f"{out}/results.jsonl",
        place: where,
    }
    folder = result.summary.get("folder")
    if isinstance(folder, dict) and "spend_usd" in folder:
        fields["folder_spend_usd"] = folder["spend_usd"]
        fields["folder_spend_units"] = folder["spend_units"]
    return Line(text, fields=fields)


def spend_phrase(result: RunResult) -> str:
    """``this run's estimated spend $0.34``, and the folder's total where it differs (a resumed
    run, an --append), so that one is not read as the other."""
    counts = result.counts
    ours = spend_text(counts.spend_usd, counts.spend_units)
    said = f"this run's estimated spend {ours}"
    folder = result.summary.get("folder")
    if isinstance(folder, dict) and "spend_usd" in folder:
        total = spend_text(folder["spend_usd"], folder["spend_units"])
        if total != ours:
            said += f" (folder total {total})"
    return said


def advice_for(result: RunResult, budget: str | None = None) -> str:
    """What helps, for the cause the run stopped for (pure): running the same command again
    resumes an interrupted run, but spends a --budget again, and cannot price a model."""
    counts = result.counts
    if result.advice:
        return result.advice
    if counts.over_budget:
        left = counted(counts.over_budget, "job")
        again = f"up to {budget} more" if budget else "its budget again"
        return (
            f"each run has its own --budget: the same command again sends the {left} left "
            f"and may spend {again}; give --budget what you mean to spend on them"
        )
    if counts.unpriced:
        return (
            "running it again sends none of them: give their models a price in the manifest "
            "(prices: {MODEL: USD}) or the budget in compute units (--budget 500cu)"
        )
    return "run the same command again to resume"


def after_lines(result: RunResult, out: str, budget: str | None = None) -> list[Line]:
    """Why the run stopped early, its failed jobs, and what earlier runs left (pure)."""
    counts = result.counts
    lines = []
    if result.stopped:
        advice = advice_for(result, budget)
        lines.append(
            Line(
                f"stopped early: {result.stopped}; {advice}",
                "warning",
                {"event": "stopped", "stopped": result.stopped, "advice": advice},
            )
        )
    if counts.cancelled:
        lines.append(
            Line(
                f"{counted(counts.cancelled, 'job')} waiting at the server cancelled as the run "
                f"stopped, unbilled: the next run sends {them(counts.cancelled)} again",
                "info",
                {"event": "cancelled", "cancelled": counts.cancelled},
            )
        )
    if counts.failed:
        lines.append(
            Line(
                f"{counted(counts.failed, 'job')} failed: `krea-batch status {out}` groups the "
                f"reasons; `run … --retry-failed` sends {them(counts.failed)} again (a job the "
                "API says is gone may still have been paid for)",
                "warning",
                {"event": "failed", "failed": counts.failed},
            )
        )
    lines += earlier_outcomes(counts, out)
    return lines


def earlier_outcomes(counts: Counts, out: str) -> list[Line]:
    """What the folder still holds from earlier runs that is no success (pure)."""
    lines = []
    if counts.failed_before:
        lines.append(
            Line(
                f"{counted(counts.failed_before, 'job')} failed in an earlier run and still "
                f"count{'s' if counts.failed_before == 1 else ''} as failed (exit 1): "
                f"`krea-batch status {out}` groups the reasons; "
                f"`run … --retry-failed` sends {them(counts.failed_before)} again",
                "warning",
                {"event": "failed_before", "failed_before": counts.failed_before},
            )
        )
    if n := counts.ambiguous_before:
        lines.append(
            Line(
                f"{counted(n, 'job')} ended ambiguous in an earlier run "
                f"(exit 1): `run … --retry-ambiguous` says what sending {them(n)} again may "
                f"cost, then sends {them(n)}",
                "warning",
                {"event": "ambiguous_before", "ambiguous_before": n},
            )
        )
    return lines


def say_closing(
    result: RunResult, out: str, sharded: bool, log_format: str, budget: str | None = None
) -> None:
    """Print the summary to stdout and the rest to stderr, as text or JSON lines
    (``budget``: the run's --budget, as said to people)."""
    summary = summary_line(result, out, sharded)
    after = after_lines(result, out, budget)
    if log_format == "json":
        print(json_line(summary.level, summary.text, **summary.fields))
        for line in after:
            print(json_line(line.level, line.text, **line.fields), file=sys.stderr)
        return
    print(_fit(summary.text, sys.stdout))
    for line in after:
        print(_fit(line.text, sys.stderr), file=sys.stderr)


def _fit(text: str, stream: TextIO) -> str:
    """On a terminal, the text broken between phrases at its width (the terminal itself
    would break it inside a word: esti/mated)."""
    if not stream.isatty():
        return text
    return wrap_phrases(text, shutil.get_terminal_size().columns)
