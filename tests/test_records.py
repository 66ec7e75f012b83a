"""Results records: written and read in one module, always in one shape."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

from runner.api.remote import JobStatus, RemoteJob
from runner.jobspec import JobSpec
from runner.outputs import (
    FileEntry,
    Layout,
    RecordStatus,
    latest_records,
    read_records,
)
from runner.outputs.atomic import write_atomic
from runner.outputs.images import inside
from runner.outputs.results_log import ResultsLog, file_digest, key_digest
from runner.state.ledger import KeyState
from runner.state.records import (
    ResultRecord,
    ambiguous_record,
    completed_record,
    failed_record,
    parse_record,
    record_line,
    spend_of,
)

SPEC = JobSpec(
    key="0123456789abcdef",
    index=4,
    entry=1,
    name="fox",
    model="flux-1-dev",
    endpoint="/generate/image/bfl/flux-1-dev",
    body={"prompt": "a fox", "width": 512, "height": 512},
    replica=0,
    seed=3,
    vars={"animal": "fox"},
    units=3.0,
    usd=0.025,
)
STATE = KeyState(attempts=2, job_id="job-1", submitted_at=1_700_000_000.0)
FILE = FileEntry("images/fox.png", "ab" * 32, 1234)


def written() -> list[ResultRecord]:
    remote = RemoteJob("job-1", JobStatus.COMPLETED, 1_700_000_001.0, 1_700_000_007.5, ("u",), None)
    return [
        completed_record(SPEC, STATE, remote, [FILE], noticed_at=1_700_000_008.0),
        failed_record(SPEC, STATE, "moderated"),
        ambiguous_record(
            SPEC, STATE, ("job-a", "job-b"), [], "its lost submit matches no single job"
        ),
    ]


@pytest.mark.parametrize("record", written(), ids=["completed", "failed", "ambiguous"])
def test_every_record_written_reads_back_the_same_in_one_shape(record: ResultRecord) -> None:
    line = json.loads(record_line(record))
    read = parse_record(line)
    assert read == record
    assert list(line) == [field.name for field in dataclasses.fields(ResultRecord)]
    assert line == record.to_json()  # the one encoder, the one decoder: a round trip
    assert set(written()[0].to_json()) == set(line)  # every status has every key


def test_a_completed_record_carries_its_timings_and_cost() -> None:
    record = written()[0]
    assert record.status is RecordStatus.COMPLETED
    assert record.timings["seconds"] == 6.5
    assert record.timings["noticed_at"] is not None
    assert (record.cost_usd, record.cost_units) == (0.025, 3.0)
    assert record.params == {"width": 512, "height": 512}


def test_a_partial_or_odd_record_is_read_with_defaults() -> None:
    record = parse_record(
        {
            "key": "k",
            "status": "completed",
            "files": [{"path": "images/a.png"}],
            "seed": "three",  # wrong type: its default
            "params": [],
            "timings": {"seconds": "slow", "created_at": "2026-01-01T00:00:00Z"},
            "cost_units": 2,
        }
    )
    assert record is not None
    assert record.seed is None
    assert record.params == {}
    assert record.timings == {"seconds": None, "created_at": "2026-01-01T00:00:00Z"}
    assert record.files == (FileEntry("images/a.png", "", 0),)
    assert record.error is None
    assert record.candidates == ()
    assert spend_of(record) == (0.0, 2.0)


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"status": "completed", "files": []},  # no key
        {"key": 7, "status": "completed", "files": []},
        {"key": "k", "status": "completed"},  # no list of files: its images cannot be found
        {"key": "k", "status": "completed", "files": [{"sha256": "x"}]},
    ],
)
def test_what_is_not_a_record_is_refused(raw: object) -> None:
    assert parse_record(raw) is None


def test_a_status_this_version_does_not_know_is_read_as_failed_and_costs_nothing() -> None:
    record = parse_record({"key": "k", "status": "vanished", "files": [], "cost_usd": 9.0})
    assert record is not None
    assert record.status is RecordStatus.FAILED
    assert spend_of(record) == (0.0, 0.0)


def test_spend_is_in_dollars_where_priced_else_in_units() -> None:
    completed, failed, _ = written()
    assert spend_of(completed) == (0.025, 0.0)
    assert spend_of(dataclasses.replace(completed, cost_usd=None)) == (0.0, 3.0)
    assert spend_of(failed) == (0.0, 0.0)


def test_reading_skips_torn_lines_says_how_many_and_keeps_the_last_of_each_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, failed, _ = written()
    path = tmp_path / "results.jsonl"
    path.write_bytes(
        record_line(failed).encode()
        + b'{"key": "torn", "sta\n'
        + b"\xff\xfe\n"
        + record_line(first).encode()
    )
    with caplog.at_level(logging.WARNING):
        assert [r.status for r in read_records(path)] == ["failed", "completed"]
    assert "2 line(s) skipped" in caplog.text
    assert latest_records(path) == [first]


def test_results_are_written_once_and_rewritten_only_when_the_journal_disagrees(
    tmp_path: Path,
) -> None:
    records = [dataclasses.replace(record, key=f"key-{n}") for n, record in enumerate(written())]
    path = Layout(tmp_path).results
    log = ResultsLog(path)
    assert not log.open(lambda: key_digest([]), iter(()))  # no file, nothing finished: agrees
    for record in records[:2]:
        log.append(record)
    log.close()
    before = path.read_bytes()
    digest = key_digest(r.key for r in records[:2])
    assert file_digest(path) == digest
    log = ResultsLog(path)
    assert not log.open(lambda: digest, iter(())), "agrees: appended to, not rewritten"
    log.close()
    assert path.read_bytes() == before

    # A crash between the journal's line and this file's: rewritten from the journal's records.
    log = ResultsLog(path)
    assert log.open(lambda: key_digest(r.key for r in records), iter(records))
    log.close()
    assert [r.key for r in read_records(path)] == ["key-0", "key-1", "key-2"]

    # A torn last line, or a job twice in place of another, does not agree either.
    path.write_bytes(before + b'{"key": "key-2", "sta')
    assert file_digest(path) is None
    path.write_bytes(before + record_line(records[0]).encode())
    assert file_digest(path) != key_digest(r.key for r in records)

    # Closed with the journal's size noted: the next open reads neither file while both stand.
    stamp = tmp_path / "stamp"
    log = ResultsLog(path, stamp)
    assert log.open(lambda: key_digest(r.key for r in records), iter(records))
    log.close(journal_size=123)
    unread = ResultsLog(path, stamp)
    assert not unread.open(lambda: (0, 0), iter(()), journal_size=123), "trusted the stamp"
    unread.close()
    moved = ResultsLog(path, stamp)
    assert moved.open(lambda: (0, 0), iter(records), journal_size=124), "the journal grew: read"
    moved.close()

    # A job finished again: its earlier line goes when the writer closes.
    log = ResultsLog(path)
    log.rewrite(records)
    log.append(records[1], again=True)
    assert log.stale
    log.rewrite(records)
    log.close()
    assert [r.key for r in read_records(path)] == ["key-0", "key-1", "key-2"]


def test_a_path_that_leaves_the_folder_is_not_inside_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    os.symlink("/etc", tmp_path / "images" / "link")
    assert inside(tmp_path, "images/a.png") == (tmp_path / "images" / "a.png").resolve()
    for path in ("", "/etc/passwd", "../x.png", "images/../../x.png", "images/link/passwd"):
        assert inside(tmp_path, path) is None, path


def test_an_atomic_write_leaves_no_temporary_file_whether_durable_or_not(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_atomic(target, "one")
    write_atomic(target, ["t", "wo"], durable=False)
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
