"""What a folder's results.jsonl says its shards and images hold, as ``verify`` checks them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runner.errors import UsageError
from runner.outputs.layout import Layout
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.shard_reading import Expected
from runner.outputs.verify_findings import JobRef, Problem
from runner.state.records import RecordStatus, read_records

SHARD_NAME = re.compile(r"\d{5,}\.(tar|parquet)")


@dataclass(slots=True)
class Recorded:
    """What results.jsonl says, as the checks need it."""

    by_shard: dict[str, dict[str, Expected]] = field(default_factory=dict)  # name → member
    loose: list[tuple[str, Expected]] = field(default_factory=list)  # (path, expected)
    by_member: dict[str, JobRef] = field(default_factory=dict)
    two_records: dict[str, tuple[JobRef, set[str]]] = field(default_factory=dict)
    not_ours: list[Problem] = field(default_factory=list)
    shard_format: bool = False


def read_recorded(layout: Layout) -> Recorded:
    """The current record of each job (the last line wins); records of one job that name two
    shards are noted."""
    latest: dict[str, tuple[str | None, list[tuple[str, Expected]]]] = {}
    shards_of: dict[str, set[str]] = {}
    try:
        for record in read_records(layout.results):
            if record.status not in (RecordStatus.COMPLETED, RecordStatus.AMBIGUOUS):
                latest.pop(record.key, None)  # failed since: it holds no image
                continue
            files = [
                (
                    entry.path,
                    Expected(record.key, record.job_id, entry.sha256, entry.bytes),
                )
                for entry in record.files
            ]
            latest[record.key] = (record.job_id, files)
            for path, _ in files:
                place = member_of(path)
                if place is not None:
                    shards_of.setdefault(record.key, set()).add(place[0])
    except OSError as exc:
        raise UsageError(f"cannot read {layout.results}: {exc.strerror or exc}") from exc
    found = Recorded()
    for key, (job_id, files) in latest.items():
        for path, expected in files:
            place = member_of(path)
            if place is None:
                found.loose.append((path, expected))
                continue
            found.shard_format = True
            shard, member = place
            name = shard.removeprefix(SHARDS_DIR + "/")
            ref = JobRef(key, job_id, member)
            if not SHARD_NAME.fullmatch(name):
                found.not_ours.append(
                    Problem("not ours", path, (ref,), "its record names no shard of this folder")
                )
                continue
            found.by_shard.setdefault(name, {})[member] = expected
            found.by_member[member] = ref
        if len(shards_of.get(key, ())) > 1:
            shards = {s.removeprefix(SHARDS_DIR + "/") for s in shards_of[key]}
            found.two_records[key] = (JobRef(key, job_id, ""), shards)
    return found


def format_of(layout: Layout, records: Recorded) -> str:
    """The folder's format: as its state says, else as its records show."""
    try:
        held = (layout.state / "format").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        held = ""
    if held in ("files", "webdataset", "parquet"):
        return held
    if any(name.endswith(".parquet") for name in records.by_shard):
        return "parquet"
    return "webdataset" if records.by_shard else "files"
