"""What ``report.html`` shows of each record: a card for the gallery's script (written
PER_PAGE to a chunk file), a compare cell's caption, and an ambiguous job's row, whose
candidates' images are shown as theirs, never as the job's own. Pure but for ``Chunks``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runner.outputs.layout import unmatched_stem
from runner.outputs.shard_files import member_of
from runner.state.records import ResultRecord

PER_PAGE = 300
MAX_CANDIDATE_IMAGES = 8  # of one ambiguous job


def caption(record: ResultRecord) -> str:
    parts = [record.model]
    if record.seed is not None:
        parts.append(f"seed {record.seed}")
    seconds = record.timings.get("seconds")
    if isinstance(seconds, int | float):
        parts.append(f"{seconds:g} s")
    return " · ".join(parts)


def tooltip(record: ResultRecord) -> str:
    return f"{record.prompt}\nkey {record.key}\nparams {_params(record)}"


def card(record: ResultRecord, image: tuple[str | None, str | None]) -> dict[str, Any]:
    """What the page's script needs of one record (``image``: its picture's path and, for an
    image in a shard, the shard)."""
    shown: dict[str, Any] = {
        "key": record.key,
        "status": record.status,
        "model": record.model,
        "seed": record.seed,
        "prompt": record.prompt,
        "path": image[0],
        "error": record.error,
        "shape": shape(record.params),
        "replica": record.replica,
    }
    if image[1] is not None:
        shown["where"] = image[1]
    return shown


def ambiguous_card(record: ResultRecord, images: list[dict[str, str]]) -> dict[str, Any]:
    """An ambiguous job's card: no picture of its own, its candidates and their ``images``."""
    return {
        **card(record, (None, None)),
        "candidates": list(record.candidates),
        "unmatched": images[:MAX_CANDIDATE_IMAGES],
    }


def ambiguous_row(record: ResultRecord, images: list[dict[str, str]]) -> dict[str, Any]:
    """An ambiguous job as the page's table lists it: what it asked for, why it is
    ambiguous, the remote jobs that could be its own and their ``images``."""
    return {
        "key": record.key,
        "model": record.model,
        "prompt": record.prompt,
        "params": _params(record),
        "error": record.error,
        "candidates": list(record.candidates),
        "images": images[:MAX_CANDIDATE_IMAGES],
        "more": max(0, len(images) - MAX_CANDIDATE_IMAGES),
    }


def candidate_images(record: ResultRecord, unmatched: Mapping[str, str]) -> list[dict[str, str]]:
    """The images of an ambiguous job's candidates, each with the candidate it is of.

    Jobs that lost their answers together share candidates, and each candidate's images are
    listed in the record of one of them only: they are found by name in ``unmatched`` (every
    ambiguous record's files, by file stem), then the record's own files not found so."""
    images = []
    for job_id in record.candidates:
        stem = name = unmatched_stem(job_id)
        n = 0
        while name in unmatched:
            images.append({"path": unmatched[name], "name": job_id})
            n += 1
            name = f"{stem}-{n}"
    found = {image["path"] for image in images}
    for entry in record.files:
        if entry.path not in found and member_of(entry.path) is None:
            images.append({"path": entry.path, "name": PurePosixPath(entry.path).stem})
    return images


def shape(params: Mapping[str, Any]) -> str | None:
    """``16:9`` or ``1024×576``: what tells two tiles of one prompt and seed apart."""
    ratio = params.get("aspect_ratio")
    if isinstance(ratio, str):
        return ratio
    width, height = params.get("width"), params.get("height")
    return f"{width}×{height}" if isinstance(width, int) and isinstance(height, int) else None


def _params(record: ResultRecord) -> str:
    return json.dumps(record.params, ensure_ascii=False, sort_keys=True)


@dataclass
class Chunks:
    """Cards written PER_PAGE to a file as they come: ``c00001.js``, ``f00001.js``, …"""

    folder: Path
    kind: str
    count: int = 0
    _rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, shown: dict[str, Any]) -> None:
        self._rows.append(shown)
        if len(self._rows) == PER_PAGE:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        self.count += 1
        name = f"{self.kind}{self.count:05d}"
        rows = json.dumps(self._rows, ensure_ascii=False, separators=(",", ":"))
        (self.folder / f"{name}.js").write_text(
            f"kreaBatchChunk({json.dumps(name)},{rows});\n", encoding="utf-8"
        )
        self._rows = []
