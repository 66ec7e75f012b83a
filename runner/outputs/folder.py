"""An output folder opened for writing: its lock, downloads put in place, and the files
written at the end of a run (metadata.jsonl, summary.json). results.jsonl is the writer's
(runner.outputs.results_log)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from runner.errors import UsageError
from runner.outputs.atomic import fsync_dir, write_atomic
from runner.outputs.images import intact
from runner.outputs.layout import Layout
from runner.outputs.metadata import MetadataRow, metadata_lines
from runner.state.records import FileEntry, ResultRecord, read_records


class OutputFolder:
    """One run's output folder, locked for as long as the object is open."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = Layout(root)
        self.state = self.layout.state
        self.images = self.layout.images
        self.journal_path = self.layout.journal
        self.results_path = self.layout.results
        self.summary_path = self.layout.summary
        self._lock: TextIO | None = None

    def open(self) -> None:
        """Create the folder, take the lock (a UsageError if another run holds it), tidy up."""
        try:
            self.state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the output folder {self.root}: {exc.strerror}"
            ) from exc
        self._refuse_links()
        try:
            fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            lock = os.fdopen(fd, "r+", encoding="utf-8")
        except OSError as exc:  # a read-only file system, no permission, a full disk
            raise UsageError(
                f"cannot write to the output folder {self.root}: {exc.strerror}; nothing was sent"
            ) from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UsageError(
                f"{self.root} is in use by another krea-batch run ({holder}); "
                "wait for it to end or choose another --out"
            ) from exc
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock
        for partial in self.images.rglob(".*.part"):
            partial.unlink(missing_ok=True)  # downloads cut short by a crash

    def _refuse_links(self) -> None:
        """The folder's own files are ours: a symlink or anything but a file there is refused
        (appending to a link could write into any file this user may write)."""
        layout = self.layout
        for path in (layout.lock, layout.journal, layout.results, layout.summary):
            if path.is_symlink() or (path.exists() and not path.is_file()):
                what = "a symlink" if path.is_symlink() else "not a regular file"
                raise UsageError(
                    f"{path} is {what}; krea-batch writes only its own files in the output "
                    "folder: remove it (or choose another --out) and run again"
                )

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> OutputFolder:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def partial_path(self, name: str) -> Path:
        self.images.mkdir(exist_ok=True)
        return self.images / f".{name}.part"

    def place(self, partial: Path, name: str) -> Path:
        """Move a finished download into place atomically; returns its final path."""
        final = self.images / name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        fsync_dir(final.parent)
        return final

    def write_metadata(self, rows: Iterable[MetadataRow]) -> None:
        write_atomic(self.layout.metadata, metadata_lines(rows))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")


def intact_records(
    root: Path, holds: Callable[[FileEntry], bool] | None = None
) -> Iterator[ResultRecord]:
    """The records of ``root``/results.jsonl whose files are all there, unchanged (sha256),
    inside the folder (or as ``holds`` says). What a folder whose journal was lost still proves
    it holds."""
    check = holds or (lambda entry: intact(root, entry))
    for record in read_records(Layout(root).results):
        if all(check(entry) for entry in record.files):
            yield record
