"""The output folder: its layout, its rules, and every file a run writes into it.

layout.py    where each file lives (Layout), pure
atomic.py    replacing a file so that readers and crashes see the old or the new
folder.py    OutputFolder: the lock, downloads put in place, results/metadata/summary written
records.py   ResultRecord: the one place that writes and reads results records
images.py    a download's extension, whether it is an image, whether it is intact
metadata.py  metadata.jsonl for Hugging Face datasets
summary.py   summary.json, one shape for a run and a merge
report.py    report.html and its chunks
live.py      status.json and the Prometheus textfile of a live run
"""

from runner.outputs.atomic import fsync_dir, write_atomic
from runner.outputs.folder import OutputFolder, intact_records
from runner.outputs.images import image_extension, image_problem
from runner.outputs.layout import STATE_DIR, Layout, relative
from runner.outputs.records import (
    FileEntry,
    RecordStatus,
    ResultRecord,
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
    "latest_records",
    "read_records",
    "relative",
    "write_atomic",
]
