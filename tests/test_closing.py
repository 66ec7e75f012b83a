"""What a run says when it ends: advice that fits why it stopped."""

from __future__ import annotations

from runner.cli.closing import advice_for, after_lines
from runner.engine import RunResult
from runner.state.figures import Counts


def test_a_budget_stop_does_not_advise_spending_the_budget_again_unawares() -> None:
    result = RunResult(Counts(total=13, completed=4, over_budget=9), stopped="budget reached")
    advice = advice_for(result, "$25")
    assert "run the same command again to resume" not in advice
    assert "each run has its own --budget" in advice
    assert "sends the 9 jobs left and may spend up to $25 more" in advice


def test_a_model_the_budget_cannot_price_is_not_helped_by_running_again() -> None:
    result = RunResult(Counts(total=2, unpriced=2), stopped="2 jobs not submitted")
    assert "running it again sends none of them" in advice_for(result)
    assert "prices:" in advice_for(result)


def test_an_interrupted_run_resumes_and_a_cause_of_the_engine_keeps_its_advice() -> None:
    interrupted = RunResult(Counts(total=5, completed=2), stopped="interrupted by SIGINT")
    assert advice_for(interrupted) == "run the same command again to resume"
    refused = RunResult(Counts(total=5, over_budget=1), stopped="fatal", advice="add credits")
    assert advice_for(refused) == "add credits"


def test_one_failed_job_is_one_job() -> None:
    [line] = after_lines(RunResult(Counts(total=1, failed=1)), "out")
    assert line.text.startswith("1 job failed:")


def test_stragglers_resent_and_jobs_cancelled_as_the_run_stopped_are_said() -> None:
    from runner.cli.closing import summary_line
    from runner.cli.progress import _phrases, figures_of
    from runner.state.figures import stats_of

    counts = Counts(total=10, completed=6, stragglers=3, cancelled=4)
    result = RunResult(counts, stopped="deadline reached")
    summary = summary_line(result, "out", sharded=False)
    assert "3 stragglers resent" in summary.text
    assert (summary.fields["stragglers"], summary.fields["cancelled"]) == (3, 4)
    [cancelled] = [line for line in after_lines(result, "out") if "cancelled" in line.text]
    assert cancelled.text.startswith("4 jobs waiting at the server cancelled")
    assert "unbilled" in cancelled.text
    live = _phrases(figures_of(stats_of(counts, 0.0, 10.0)))
    assert {"3 stragglers resent", "4 cancelled unbilled"} <= set(live)


def test_one_job_cancelled_or_failed_before_is_it_not_them() -> None:
    counts = Counts(total=3, cancelled=1, failed_before=1, ambiguous_before=1)
    text = "\n".join(line.text for line in after_lines(RunResult(counts), "out"))
    assert "the next run sends it again" in text
    assert "1 job failed in an earlier run and still counts as failed" in text
    assert "`run … --retry-failed` sends it again" in text
    assert "says what sending it again may cost, then sends it" in text
    assert "them" not in text


def test_a_resumed_runs_spend_is_said_to_be_its_own_beside_the_folders_total() -> None:
    from runner.cli.closing import summary_line

    result = RunResult(Counts(total=6, completed=2, skipped=4, spend_usd=0.34))
    result.summary = {"folder": {"spend_usd": 0.42, "spend_units": 0.0}}
    line = summary_line(result, "out", sharded=False)
    assert "this run's estimated spend $0.34 (folder total $0.42)" in line.text
    assert line.fields["folder_spend_usd"] == 0.42
    result.summary = {"folder": {"spend_usd": 0.34, "spend_units": 0.0}}  # a first run
    assert "this run's estimated spend $0.34\n" in summary_line(result, "out", False).text
