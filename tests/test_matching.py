"""Pure parts of never paying twice: clock skew, the submit window, and matching lost POSTs."""

from __future__ import annotations

import pytest

from runner.api.limiter import SubmitWindow
from runner.api.skew import DEFAULT_MARGIN, ClockSkew
from runner.engine.matching import MAX_GROUP, Candidate, ListingScan, LostPost, match

MEASURED = ClockSkew(-0.01, 0.01, measured=True)  # server and us agree within 10 ms


def test_skew_starts_wide_and_keeps_the_narrowest_reading_that_agrees() -> None:
    skew = ClockSkew()
    assert (skew.low, skew.high) == (-DEFAULT_MARGIN, DEFAULT_MARGIN)
    skew = skew.observe(sent=100.0, received=100.2, stamp=103.1)  # server 3 s ahead
    assert (skew.low, skew.high) == pytest.approx((2.9, 3.1))
    skew = skew.observe(sent=200.0, received=200.1, stamp=203.05)
    assert (skew.low, skew.high) == pytest.approx((2.95, 3.05))
    assert skew.observe(sent=201.0, received=201.3, stamp=204.0) == skew  # agrees, wider
    moved = skew.observe(sent=300.0, received=300.1, stamp=290.0)  # the server went back 13 s
    assert (moved.low, moved.high) == pytest.approx((-10.1, -10.0))


def test_a_date_header_reads_the_clock_to_the_second_and_a_jump_either_way_widens() -> None:
    before = ClockSkew().observe(sent=100.0, received=100.2, stamp=400.0, precision=1.0)
    assert (before.low, before.high) == pytest.approx((298.8, 301.0))  # 5 minutes ahead
    ahead = ClockSkew().observe(sent=200.0, received=200.1, stamp=620.0, precision=1.0)
    assert before.hull(ahead).low == pytest.approx(298.8)
    assert before.hull(ahead).high == pytest.approx(421.0)  # jumped 120 s forward
    behind = ClockSkew().observe(sent=200.0, received=200.1, stamp=380.0, precision=1.0)
    assert before.hull(behind).low == pytest.approx(178.9)
    assert before.hull(ClockSkew()) == before  # nothing read after: the window as before


def test_a_window_is_the_flight_of_the_post_moved_onto_the_servers_clock() -> None:
    start, end = ClockSkew(-2.1, -1.9, measured=True).window(sent=50.0, ended=50.5)
    assert start == pytest.approx(47.9 - 0.002)
    assert end == pytest.approx(48.6 + 0.002)


def test_the_submit_window_follows_the_post_time_and_holds_at_one_after_a_lost_answer() -> None:
    window = SubmitWindow(16, hold=3)
    assert window.level == 1
    window.clean(0.2)  # a distant API: 200 ms a POST
    assert window.level == 16
    window.lost()
    held = []
    for _ in range(4):
        window.clean(0.2)
        held.append(window.level)
    assert held == [1, 1, 1, 16]


def test_fast_posts_go_one_at_a_time_and_slow_ones_in_parallel() -> None:
    window = SubmitWindow(32)
    for _ in range(10):
        window.clean(0.002)  # a nearby API: two milliseconds a POST
    assert window.level == 1
    for _ in range(40):
        window.clean(0.15)  # a distant one: 150 ms
    assert window.level == 32


def post(key: str, sent: float, ended: float | None = None, created: bool = False) -> LostPost:
    return LostPost(key, sent, sent + 0.1 if ended is None else ended, created)


def test_no_job_in_the_window_means_send_it_again() -> None:
    found = match([post("a", 10.0)], [Candidate("x", 9.0), Candidate("y", 10.5)], MEASURED)
    assert found.resend == ["a"]
    assert not found.adopted
    assert not found.ambiguous


def test_a_2xx_answer_with_no_job_listed_is_neither_resent_nor_guessed() -> None:
    found = match([post("a", 10.0, created=True)], [], MEASURED)
    assert found.unseen == ["a"]
    assert not found.resend


def test_one_job_in_the_window_is_adopted() -> None:
    found = match([post("a", 10.0)], [Candidate("x", 10.05), Candidate("y", 30.0)], MEASURED)
    assert found.adopted["a"].job_id == "x"


def test_two_jobs_in_one_window_are_ambiguous() -> None:
    found = match([post("a", 10.0)], [Candidate("x", 10.03), Candidate("y", 10.06)], MEASURED)
    assert found.ambiguous == {"a": ("x", "y")}


def test_overlapping_windows_with_one_possible_assignment_are_resolved() -> None:
    # x is only in a's window; y in both: a must own x, so y is b's.
    posts = [post("a", 10.0, 10.2), post("b", 10.15, 10.4)]
    found = match(posts, [Candidate("x", 10.05), Candidate("y", 10.18)], MEASURED)
    assert {k: c.job_id for k, c in found.adopted.items()} == {"a": "x", "b": "y"}


def test_overlapping_windows_that_cannot_be_told_apart_are_ambiguous() -> None:
    posts = [post("a", 10.0, 10.2), post("b", 10.05, 10.25)]
    found = match(posts, [Candidate("x", 10.1), Candidate("y", 10.12)], MEASURED)
    assert found.ambiguous == {"a": ("x", "y"), "b": ("x", "y")}
    assert not found.resend


def test_one_job_between_two_lost_posts_is_ambiguous_unless_one_surely_created_a_job() -> None:
    posts = [post("a", 10.0, 10.2), post("b", 10.05, 10.25)]
    assert set(match(posts, [Candidate("x", 10.1)], MEASURED).ambiguous) == {"a", "b"}
    posts = [post("a", 10.0, 10.2, created=True), post("b", 10.05, 10.25)]
    found = match(posts, [Candidate("x", 10.1)], MEASURED)
    assert found.adopted["a"].job_id == "x"
    assert found.resend == ["b"]


def test_another_clients_job_next_to_ours_makes_it_ambiguous() -> None:
    found = match(
        [post("a", 10.0)], [Candidate("ours", 10.05), Candidate("theirs", 10.07)], MEASURED
    )
    assert found.ambiguous == {"a": ("ours", "theirs")}


def test_skew_decides_which_job_lies_in_the_window() -> None:
    jobs = [Candidate("at-our-time", 10.05), Candidate("three-s-later", 13.05)]
    ahead = ClockSkew(2.95, 3.05, measured=True)
    behind = ClockSkew(-3.05, -2.95, measured=True)
    assert match([post("a", 10.0)], jobs, ahead).adopted["a"].job_id == "three-s-later"
    jobs = [Candidate("at-our-time", 10.05), Candidate("three-s-earlier", 7.05)]
    assert match([post("a", 10.0)], jobs, behind).adopted["a"].job_id == "three-s-earlier"


def test_a_job_without_a_creation_time_could_be_anyones() -> None:
    found = match([post("a", 10.0), post("b", 50.0)], [Candidate("x", None)], MEASURED)
    assert set(found.ambiguous) == {"a", "b"}


def test_a_tangle_larger_than_the_solver_takes_is_ambiguous() -> None:
    posts = [post(f"p{i}", 10.0 + i * 0.01, 11.0) for i in range(MAX_GROUP + 1)]
    jobs = [Candidate(f"j{i}", 10.5 + i * 0.01) for i in range(MAX_GROUP + 1)]
    assert len(match(posts, jobs, MEASURED).ambiguous) == MAX_GROUP + 1


def test_separate_windows_are_solved_separately() -> None:
    posts = [post("a", 10.0), post("b", 20.0), post("c", 30.0)]
    jobs = [Candidate("x", 10.05), Candidate("y", 30.02), Candidate("z", 30.04)]
    found = match(posts, jobs, MEASURED)
    assert found.adopted["a"].job_id == "x"
    assert found.resend == ["b"]
    assert found.ambiguous == {"c": ("y", "z")}


def stamped(*stamps: float) -> list[Candidate]:
    return [Candidate(f"j{stamp:g}", stamp) for stamp in stamps]


def test_a_search_stops_early_only_on_shown_newest_first_order() -> None:
    newest_first = ListingScan(known=set())
    assert newest_first.feed(stamped(*range(100, 95, -1)), "c1", start=99.5)
    assert not newest_first.feed(stamped(*range(95, 90, -1)), "c2", start=99.5)  # proven
    assert newest_first.doubt is None
    oldest_first = ListingScan(known=set())
    assert oldest_first.feed(stamped(*range(10)), "c1", start=99.5)  # read on: another order
    two_only = ListingScan(known=set())
    assert two_only.feed(stamped(20.0, 10.0), "c1", start=99.5)  # too few stamps to show it


def test_an_empty_page_with_a_cursor_is_not_the_end_and_a_loop_is_doubt() -> None:
    scan = ListingScan(known=set())
    assert scan.feed([], "c1", start=0.0)
    assert scan.feed(stamped(5.0), "c2", start=0.0)
    assert not scan.feed(stamped(4.0), "c1", start=0.0)
    assert scan.doubt == "the job listing's cursor repeats"
    assert set(scan.jobs) == {"j5", "j4"}


def test_known_jobs_are_no_ones_candidates_and_repeats_count_once() -> None:
    scan = ListingScan(known={"j5"})
    scan.feed(stamped(5.0, 4.0), "c1", start=0.0)
    scan.feed(stamped(4.0, 3.0), None, start=0.0)
    assert sorted(scan.jobs) == ["j3", "j4"]
    assert scan.doubt is None
