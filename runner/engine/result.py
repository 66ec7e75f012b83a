"""What a run comes to: its counts, and why it stopped or is not whole at its destination."""

from __future__ import annotations

from runner.engine.stopper import Stopper
from runner.outputs import OutputFolder
from runner.outputs.writers import Writer
from runner.state.figures import Counts, RunResult
from runner.wording import counted


def run_result(counts: Counts, stopper: Stopper, writer: Writer, folder: OutputFolder) -> RunResult:
    """The run's result, once its writer is closed."""
    stopped = stopper.reason
    if stopper.fatal is None and stopper.disk_error is None and not counts.unfinished:
        stopped = None  # the stop came after the last job was sent: it left nothing undone
    reasons = []
    if counts.over_budget:
        reasons.append(f"budget reached: {counted(counts.over_budget, 'job')} not submitted")
    if counts.unpriced:
        reasons.append(
            f"{counted(counts.unpriced, 'job')} not submitted: --budget cannot price their model"
        )
    unsaved = writer.unsaved
    if unsaved:
        where = writer.destination.url or str(folder.root)
        reasons.append(
            f"{len(unsaved)} shard(s) not yet at {where} ({', '.join(unsaved[:3])}"
            f"{', …' if len(unsaved) > 3 else ''}): the next run puts them there"
        )
    lost = len(writer.lost_jobs())
    if lost:
        reasons.append(f"{lost} job(s) lost their images: the next run fetches them again")
    if reasons and (stopped is None or unsaved or lost):
        stopped = "; ".join(([stopped] if stopped else []) + reasons)
    return RunResult(
        counts, stopped=stopped, fatal=stopper.fatal is not None, advice=stopper.advice
    )
