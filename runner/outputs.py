"""The output folder: its layout, its lock, atomic files, results.jsonl and summary.json.

OUT/
  images/            one file per result URL, named from the job key
  results.jsonl      one current record per job (appended live, compacted at the end)
  summary.json       counts, spend, wall time, settings
  .krea-batch/       journal.jsonl and the lock
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from runner.dataset import METADATA_NAME, metadata_lines
from runner.errors import DiskError, UsageError

STATE_DIR = ".krea-batch"
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def image_extension(content_type: str, url: str) -> str:
    """The file extension for a downloaded image: from its type, else its URL, else .png."""
    ext = _EXTENSIONS.get(content_type.split(";")[0].strip().lower())
    if ext:
        return ext
    path = url.split("?", 1)[0].lower()
    for candidate in (".png", ".jpg", ".jpeg", ".webp"):
        if path.endswith(candidate):
            return ".jpg" if candidate == ".jpeg" else candidate
    return ".png"


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Replace ``path`` with ``text`` so that readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.writelines([text] if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file stays, and no half-written one beside it
        raise
    fsync_dir(path.parent)


class OutputFolder:
    """One run's output folder, locked for as long as the object is open."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.images = root / "images"
        self.journal_path = self.state / "journal.jsonl"
        self.results_path = root / "results.jsonl"
        self.summary_path = root / "summary.json"
        self._lock: TextIO | None = None
        self._results: TextIO | None = None

    def open(self) -> None:
        """Create the folder, take the lock (a UsageError if another run holds it), tidy up."""
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self.state.mkdir(exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the output folder {self.root}: {exc.strerror}"
            ) from exc
        try:
            lock = (self.state / "lock").open("a+", encoding="utf-8")
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
        self._results = self.results_path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._results is not None:
            self._results.close()
            self._results = None
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
        return self.images / f".{name}.part"

    def place(self, partial: Path, name: str) -> Path:
        """Move a finished download into place atomically; returns its final path."""
        final = self.images / name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        fsync_dir(final.parent)
        return final

    def append_result(self, record: Mapping[str, Any]) -> None:
        """Add a record to results.jsonl as it happens (compacted to one per job at the end)."""
        if self._results is not None:
            try:
                self._results.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._results.flush()
            except OSError as exc:
                raise DiskError(str(self.root), exc) from exc

    def write_results(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Rewrite results.jsonl with exactly the given records (streamed); returns how many."""
        count = 0

        def lines() -> Iterator[str]:
            nonlocal count
            for record in records:
                count += 1
                yield json.dumps(record, ensure_ascii=False) + "\n"

        if self._results is not None:
            self._results.close()
        write_atomic(self.results_path, lines())
        self._results = self.results_path.open("a", encoding="utf-8")
        return count

    def write_metadata(self, rows: Iterable[Mapping[str, Any]]) -> None:
        write_atomic(self.root / METADATA_NAME, metadata_lines(rows))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")


def image_problem(path: Path) -> str | None:
    """Why the file is not an image we can use, or None (header and checksums; no decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
    except Image.DecompressionBombError as exc:
        return f"the image claims too many pixels ({exc})"
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's ways of saying "not an image"
        return f"not an image Pillow can open ({exc})"
    return None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a results.jsonl, skipping any line that is not a JSON object."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except ValueError:  # a torn or foreign line (not JSON, not UTF-8)
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                yield record


def intact_records(root: Path) -> Iterator[dict[str, Any]]:
    """The records of ``root``/results.jsonl whose files are all there, unchanged (sha256),
    inside the folder. What a folder whose journal was lost still proves it holds."""
    for record in read_records(root / "results.jsonl"):
        files = record.get("files")
        if not isinstance(files, list):
            continue
        if all(_intact(root, entry) for entry in files):
            yield record


def _intact(root: Path, entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return False
    path = (root / entry["path"]).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == entry.get("sha256")


def relative(path: Path, root: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(root))
    return str(path)
