"""Shards: a deterministic split of one manifest's jobs, and merging their output folders."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.exitcodes import ExitCode
from runner.outputs import Layout, OutputFolder, RecordStatus, ResultRecord, latest_records
from runner.outputs.figures import stats_of
from runner.outputs.images import file_sha256, inside
from runner.outputs.ledger import counts_of
from runner.outputs.metadata import metadata_rows
from runner.outputs.report import write_report
from runner.outputs.results_log import ResultsLog
from runner.outputs.summary import summary as run_summary


def _better(new: ResultRecord, old: ResultRecord | None) -> bool:
    done = RecordStatus.COMPLETED
    return old is None or (new["status"] == done and old["status"] != done)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # same disk: no copy needed
    except OSError:
        shutil.copy2(source, target)


def _inside(source: Path, path: str, key: str) -> None:
    """Refuse a file path of a results record that would leave its folder (or the merged one)."""
    if inside(source, path) is None:
        raise UsageError(
            f"{source}/results.jsonl: job {key} lists the file {path[:80]!r}, outside its "
            "folder; not merged"
        )


def merge_folders(sources: Sequence[Path], out: Path) -> dict[str, Any]:
    """Combine the results and images of several output folders into ``out``."""
    started = time.time()
    chosen: dict[str, tuple[Path, ResultRecord]] = {}
    for source in sources:
        results = Layout(source).results
        if not results.exists():
            raise UsageError(f"{source} holds no results.jsonl: is it a krea-batch output folder?")
        for record in latest_records(results):
            previous = chosen.get(record["key"])
            if _better(record, previous[1] if previous else None):
                chosen[record["key"]] = (source, record)
    for source, record in chosen.values():
        for entry in record["files"]:
            _inside(source, entry["path"], record["key"])
    with OutputFolder(out) as folder:
        for source, record in chosen.values():
            for entry in record["files"]:
                target = out / entry["path"]
                if target.exists():
                    if file_sha256(target) != entry["sha256"]:
                        raise UsageError(
                            f"{target} exists with other content: merge into a new folder"
                        )
                    continue
                _copy(source / entry["path"], target)
        records = [record for _, record in chosen.values()]
        records.sort(key=lambda r: (r["index"], r["key"]))
        ResultsLog(folder.results_path).rewrite(records)
        folder.write_metadata(metadata_rows(out, records))
        counts = counts_of(records)
        summary = run_summary(
            out=str(out),
            stats=stats_of(counts, started, time.time()),
            records=len(records),
            exit_code=ExitCode.OK if counts.completed == len(records) else ExitCode.FAILED,
            merged_from=[str(s) for s in sources],
        )
        folder.write_summary(summary)
        write_report(out, records, summary)
    return summary
