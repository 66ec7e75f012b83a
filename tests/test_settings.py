"""Run settings: durations, rates and overrides."""

from __future__ import annotations

import pytest

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
