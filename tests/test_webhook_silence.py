"""Webhooks that never come, or stop coming: the run says so once and polls as a run without
webhooks would, so a wrong --webhook-url costs no time. In-process, on virtual time."""

from __future__ import annotations

from runner.engine.silence import GRACE, MISSES, Silence


def test_a_silence_is_confirmed_by_jobs_in_a_row_over_some_seconds_and_said_once() -> None:
    silence = Silence()
    assert not silence.trusted, "deliveries are not relied on before one arrives"
    for n in range(MISSES - 1):
        assert silence.miss(float(n), 2.0) is None
    assert silence.miss(GRACE - 0.1, 2.0) is None, "their deliveries may still be on the way"
    said = silence.miss(GRACE, 2.0)
    assert said is not None
    assert said.warning
    assert said.text.startswith(f"no webhook delivery has arrived for {MISSES + 1} jobs")
    assert silence.miss(GRACE + 10, 2.0) is None, "said once for a silence"
    assert silence.arrived()
    assert silence.trusted
    assert silence.miss(100.0, 2.0) is None, "one delivery lost is no silence"
    assert silence.arrived() is False, "already trusted"
    for n in range(MISSES):
        said = silence.miss(200.0 + GRACE * n, 2.0)
    assert said is not None
    assert not said.warning, "warned once a run; then for the record"
    assert "for the last 3 jobs that ended (2 arrived before)" in said.text
    assert not silence.trusted
