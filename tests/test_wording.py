"""Counts and durations are said one way everywhere: `1 job`, `3m25s`."""

from __future__ import annotations

import pytest

from runner.cli.progress import figures_of
from runner.state.figures import Counts, stats_of
from runner.wording import counted, duration


@pytest.mark.parametrize(
    ("n", "said"), [(0, "0 jobs"), (1, "1 job"), (2, "2 jobs"), (12_000, "12,000 jobs")]
)
def test_a_count_takes_the_noun_its_number_asks_for(n: int, said: str) -> None:
    assert counted(n, "job") == said


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(None, "–"), (0, "0s"), (45.4, "45s"), (205, "3m25s"), (3_600 * 2 + 300, "2h05m")],
)
def test_a_duration_reads_the_same_in_every_view(seconds: float | None, said: str) -> None:
    assert duration(seconds) == said


def test_the_live_view_says_its_eta_with_the_same_words() -> None:
    # 20 jobs in 100 s, 41 left: 205 s to go.
    stats = stats_of(Counts(total=61, completed=20), started=0.0, now=100.0)
    assert stats.eta_seconds == pytest.approx(205)
    assert figures_of(stats)["eta"] == "3m25s"
