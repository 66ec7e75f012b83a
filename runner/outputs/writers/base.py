"""The writer seam: what happens to a job's images once downloaded and to its record once
finished. The engine hands over bytes and records and never knows the layout."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import BadImage
from runner.outputs.destination import Destination
from runner.outputs.folder import OutputFolder
from runner.outputs.images import image_problem, intact
from runner.outputs.provenance import embed, with_provenance
from runner.outputs.results_log import ResultsLog
from runner.state.records import FileEntry, ResultRecord

RecordSource = Callable[[], Iterable[ResultRecord]]  # every finished job's current record


@dataclass(frozen=True, slots=True)
class Fetched:
    """One downloaded image, fsynced in a hidden file of the writer's choosing."""

    path: Path  # where the writer wants it kept until it is placed (a hidden name)
    sha256: str
    size: int
    content_type: str
    url: str
    data: bytes | None = None  # the image itself; None: it is in the file at ``path``


def checked(fetched: Fetched, provenance: Mapping[str, Any] | None) -> tuple[str, int]:
    """Refuse what is no usable image (BadImage; a file is removed), then write the
    provenance into it, and leave it whole and fsynced at ``fetched.path``; returns the final
    file's sha256 and size."""
    if fetched.data is None:  # a large image, streamed to its file
        problem = image_problem(fetched.path)
        if problem is not None:
            fetched.path.unlink(missing_ok=True)
            raise BadImage(f"GET image: {problem}")
        if provenance is not None:
            return embed(fetched.path, provenance)
        return fetched.sha256, fetched.size
    problem = image_problem(fetched.data)
    if problem is not None:
        raise BadImage(f"GET image: {problem}")
    content = fetched.data if provenance is None else with_provenance(fetched.data, provenance)
    with open(fetched.path, "wb") as handle:  # one write and one fsync, provenance included
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    digest = fetched.sha256 if content is fetched.data else hashlib.sha256(content).hexdigest()
    return digest, len(content)


class Writer(ABC):
    """Puts images and records in an output folder, in one format."""

    format: str = ""

    def __init__(
        self,
        folder: OutputFolder,
        destination: Destination | None = None,
        var_names: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.destination = destination or Destination()
        self.var_names = tuple(var_names)  # every var of the manifest (columns, for some)
        self.results = ResultsLog(folder.results_path, folder.state / "results.stamp")
        self.unsaved: list[str] = []  # after close: files not confirmed at the destination

    def check(self, records: RecordSource, completed: int = 0) -> list[ResultRecord]:
        """Before the survey: the records of finished jobs whose images the output no longer
        holds, to be fetched again from their jobs (a shard format checks its shards)."""
        return []

    def lost_jobs(self) -> list[tuple[str, str]]:
        """After close: ``(key, job_id)`` of finished jobs whose images went missing before
        they were written whole (the next run fetches them again)."""
        return []

    def open(
        self,
        finished: Callable[[], tuple[int, int]],
        records: RecordSource,
        journal_size: int | None = None,
    ) -> None:
        """Before the run: results.jsonl checked against the journal's finished jobs
        (``runner.outputs.results_log``), and rewritten from ``records`` if need be."""
        self.results.open(finished, records(), journal_size)

    @abstractmethod
    def partial_path(self, name: str) -> Path:
        """Where a download named ``name`` (unique per job and image) is streamed to."""

    @abstractmethod
    def place(self, fetched: Fetched, stem: str, provenance: Mapping[str, Any] | None) -> FileEntry:
        """Check, embed and keep one image as ``stem`` (blocking: a worker thread runs it).
        Once it returns, the image survives a crash; its record is not written yet."""

    def holds(self, entry: FileEntry) -> bool:
        """Whether a file a results record names is there, whole (a folder that lost its
        journal proves with this what it need not pay for again)."""
        return intact(self.folder.root, entry)

    def assign(self, record: ResultRecord) -> ResultRecord:
        """A finished job's record as the journal is to keep it, with its files where this
        writer will keep them (a shard format names the shard and the member)."""
        return record

    def finished(self, record: ResultRecord, again: bool = False) -> None:
        """A job's record, after the journal holds it (``again``: it replaces an earlier one)."""
        self.results.append(record, again)

    def close(self, records: RecordSource, complete: bool, journal_size: int | None = None) -> None:
        """After the run (``complete``: no job is left for a later run). ``records``: every
        finished job's current record, for a results.jsonl that must be compacted."""
        if self.results.stale:
            self.results.rewrite(records())
        self.results.close(journal_size)
