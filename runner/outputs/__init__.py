"""The output folder: every file a run writes into it (the state it keeps is runner.state).

layout.py        where each file lives (Layout), pure
atomic.py        replacing a file so that readers and crashes see the old or the new
folder.py        OutputFolder: the lock, downloads put in place, metadata/summary written
results_log.py   results.jsonl, one line per finished job, written once
writers/         the writer seam and the formats: files, webdataset, parquet
destination.py   fsspec URLs: files put there whole
images.py        a download's extension, whether it is an image, whether it is intact
shard_files.py   reading written shards back (members and their sha256)
metadata.py      metadata.jsonl for Hugging Face datasets
card.py          README.md, the dataset card
summary.py       summary.json, one shape for a run and a merge
report.py        report.html and its chunks
live.py          status.json and the Prometheus textfile of a live run
trees.py         a folder to read or copy whole files in: a path or an fsspec URL
merge.py         shard folders of `--shard I/N` runs into one
verify.py        `krea-batch verify`: every shard and image against what was recorded
"""

from runner.outputs.atomic import fsync_dir, write_atomic
from runner.outputs.folder import OutputFolder, intact_records
from runner.outputs.images import image_extension, image_problem
from runner.outputs.layout import STATE_DIR, Layout, relative
from runner.state.records import (
    FileEntry,
    RecordStatus,
    ResultRecord,
    iter_latest_records,
    latest_records,
    read_records,
)

__all__ = [
    "STATE_DIR",
    "FileEntry",
    "Layout",
    "OutputFolder",
    "RecordStatus",
    "ResultRecord",
    "fsync_dir",
    "image_extension",
    "image_problem",
    "intact_records",
    "iter_latest_records",
    "latest_records",
    "read_records",
    "relative",
    "write_atomic",
]
