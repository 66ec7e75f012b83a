"""Where each file of an output folder lives (pure: paths only, nothing is touched).

OUT/
  images/              one file per result URL, named from the job key (_unmatched/: the
                       images of ambiguous jobs' candidates)
  results.jsonl        one current record per job, appended as each finishes (results_log.py)
  metadata.jsonl       one row per image, the Hugging Face imagefolder layout
  summary.json         counts, spend, wall time, settings (runner.outputs.summary)
  krea-batch.json      what the folder is: format, API, manifests, shard (identity.py)
  README.md            the dataset card: what the Hub and datasets.load_dataset(OUT) read
  shards/              --format webdataset or parquet: NNNNN.tar or NNNNN.parquet
  report.html          the gallery; report/ holds its chunks of records
  status.json          a live run's heartbeat, rewritten every few seconds
  .krea-batch/         journal.jsonl (the write-ahead journal) and the lock
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".krea-batch"
IMAGES_DIR = "images"
RESULTS_NAME = "results.jsonl"
METADATA_NAME = "metadata.jsonl"
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"
CARD_NAME = "README.md"
REPORT_DATA_DIR = "report"
STATUS_NAME = "status.json"
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "lock"
IDENTITY_NAME = "krea-batch.json"
UNMATCHED_DIR = "_unmatched"  # under images/


def unmatched_stem(job_id: str) -> str:
    """The name of an ambiguous job's candidate's image under images/_unmatched/ (its further
    images add -1, -2, …): the candidate's job id, safe as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:100]


@dataclass(frozen=True, slots=True)
class Layout:
    """The paths of one output folder."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def journal(self) -> Path:
        return self.state / JOURNAL_NAME

    @property
    def lock(self) -> Path:
        return self.state / LOCK_NAME

    @property
    def results(self) -> Path:
        return self.root / RESULTS_NAME

    @property
    def metadata(self) -> Path:
        return self.root / METADATA_NAME

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def card(self) -> Path:
        return self.root / CARD_NAME

    @property
    def report(self) -> Path:
        return self.root / REPORT_NAME

    @property
    def report_data(self) -> Path:
        return self.root / REPORT_DATA_DIR

    @property
    def identity(self) -> Path:
        return self.root / IDENTITY_NAME

    @property
    def status(self) -> Path:
        return self.root / STATUS_NAME


def relative(path: Path, root: Path) -> str:
    """``path`` as results.jsonl names it: relative to the folder's root where it lies inside."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(root))
    return str(path)


def path_text(text: str) -> str:
    """A path (or a message holding one) as text a JSON file can hold: bytes of a name that
    is not UTF-8 (kept by Python as surrogates) are written as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
