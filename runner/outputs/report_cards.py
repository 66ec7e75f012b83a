"""What ``report.html`` shows of each record: a card for the gallery's script (written
PER_PAGE to a chunk file), a compare cell's caption, and an ambiguous job's row, whose
candidates' images are shown as theirs, never as the job's own. Pure but for ``Chunks``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runner.outputs.shard_files import member_of
from runner.state.records import RecordStatus, ResultRecord

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
    image in a shard, the shard). An ambiguous job has no picture of its own: its card lists
    its candidates and their images."""
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
    if record.status == RecordStatus.AMBIGUOUS:
        shown["candidates"] = list(record.candidates)
        shown["unmatched"] = [image["path"] for image in candidate_images(record)]
    return shown


def ambiguous_row(record: ResultRecord) -> dict[str, Any]:
    """An ambiguous job as the page's table lists it: what it asked for, why it is
    ambiguous, the remote jobs that could be its own and their images."""
    images = candidate_images(record)
    return {
        "key": record.key,
        "model": record.model,
        "prompt": record.prompt,
        "params": _params(record),
        "error": record.error,
        "candidates": list(record.candidates),
        "images": images,
        "more": sum(1 for e in record.files if member_of(e.path) is None) - len(images),
    }


def candidate_images(record: ResultRecord) -> list[dict[str, str]]:
    """The first of an ambiguous job's candidates' images (loose files under
    images/_unmatched/, each named after its candidate job)."""
    loose = [entry.path for entry in record.files if member_of(entry.path) is None]
    return [
        {"path": path, "name": PurePosixPath(path).stem} for path in loose[:MAX_CANDIDATE_IMAGES]
    ]


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
