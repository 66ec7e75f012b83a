"""Shards: a deterministic split of one manifest's jobs, and merging their output folders."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from runner.dataset import metadata_rows
from runner.errors import UsageError
from runner.exitcodes import ExitCode
from runner.outputs import OutputFolder
from runner.records import RecordStatus
from runner.report import load_records, write_report
from runner.summary import counts_of
from runner.summary import summary as run_summary


def parse_shard(text: str) -> tuple[int, int]:
    """``2/4`` → (2, 4): the second of four shards."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"--shard {text!r}: use I/N, like 2/4")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def _better(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    done = RecordStatus.COMPLETED
    return old is None or (new.get("status") == done and old.get("status") != done)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # same disk: no copy needed
    except OSError:
        shutil.copy2(source, target)


def _inside(source: Path, path: object, key: str) -> None:
    """Refuse a file path of a results record that would leave its folder (or the merged one)."""
    if not isinstance(path, str) or not path:
        raise UsageError(f"{source}/results.jsonl: job {key} lists a file without a path")
    resolved = (source / path).resolve()
    if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
        resolved = Path("/")  # never inside
    if not resolved.is_relative_to(source.resolve()):
        raise UsageError(
            f"{source}/results.jsonl: job {key} lists the file {path[:80]!r}, outside its "
            "folder; not merged"
        )


def merge_folders(sources: Sequence[Path], out: Path) -> dict[str, Any]:
    """Combine the results and images of several output folders into ``out``."""
    started = time.time()
    chosen: dict[str, tuple[Path, dict[str, Any]]] = {}
    for source in sources:
        if not (source / "results.jsonl").exists():
            raise UsageError(f"{source} holds no results.jsonl: is it a krea-batch output folder?")
        for record in load_records(source):
            previous = chosen.get(record["key"])
            if _better(record, previous[1] if previous else None):
                chosen[record["key"]] = (source, record)
    for source, record in chosen.values():
        for entry in record.get("files", []):
            _inside(source, entry.get("path"), record["key"])
    with OutputFolder(out) as folder:
        for source, record in chosen.values():
            for entry in record.get("files", []):
                target = out / entry["path"]
                if target.exists():
                    if _sha256(target) != entry["sha256"]:
                        raise UsageError(
                            f"{target} exists with other content: merge into a new folder"
                        )
                    continue
                _copy(source / entry["path"], target)
        records = [record for _, record in chosen.values()]
        records.sort(key=lambda r: (r.get("index", 0), r["key"]))
        folder.write_results(records)
        folder.write_metadata(metadata_rows(out, records))
        counts = counts_of(records)
        summary = run_summary(
            out=str(out),
            counts=counts,
            records=len(records),
            started=started,
            ended=time.time(),
            exit_code=ExitCode.OK if counts.completed == len(records) else ExitCode.FAILED,
            merged_from=[str(s) for s in sources],
        )
        folder.write_summary(summary)
        write_report(out, records, summary)
    return summary
