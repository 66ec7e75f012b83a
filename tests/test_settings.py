"""Run settings: durations, rates and overrides."""

from __future__ import annotations

import pytest

from runner.errors import UsageError
from runner.money import parse_budget
from runner.settings import RunSettings, parse_duration, parse_rate


@pytest.mark.parametrize(
    ("text", "seconds"), [(2, 2.0), ("2s", 2.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "rate"), [(2, 2.0), ("2/s", 2.0), ("120/min", 2.0), ("3600/h", 1.0)]
)
def test_rates(text: object, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["fast", "-1s", 0, True, "2/fortnight"])
def test_bad_rates_and_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"is not a|above zero"):
        parse_rate(bad)


def test_overrides_replace_only_what_is_given() -> None:
    settings = RunSettings().merged({"concurrency": 3, "rate_limit": None})
    assert settings.concurrency == 3
    assert settings.rate_limit == RunSettings().rate_limit


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("25", (25.0, "usd")),
        ("25usd", (25.0, "usd")),
        ("$2.5", (2.5, "usd")),
        ("500cu", (500.0, "cu")),
    ],
)
def test_budgets_are_in_dollars_unless_said_in_compute_units(
    text: str, parsed: tuple[float, str]
) -> None:
    assert parse_budget(text) == parsed


def test_a_budget_that_is_not_an_amount_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="give dollars"):
        parse_budget("lots")


def test_every_run_setting_is_a_flag_of_run_built_from_one_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from runner.cli import main
    from runner.settings import SETTING_FLAGS, SETTING_NAMES

    assert set(SETTING_FLAGS) == set(SETTING_NAMES)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name in SETTING_NAMES:
        assert "--" + name.replace("_", "-") in text, name
