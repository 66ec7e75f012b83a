"""``report.html``: the gallery of a run, with filters, pages and a side-by-side compare view.

The page is a jinja2 template (autoescaped); the records it shows are written beside it in
``report/`` as small script files of PER_PAGE records each (scripts, not JSON, so that the
page works opened from disk, where browsers refuse to fetch files). The first page loads
one of them; filters load the others on demand. Nothing is fetched from elsewhere; images
are linked by their paths relative to the output folder, so the folder can be zipped and
opened anywhere. Writing reads the records once and holds only the compare table and the
first failures: a 100,000-job report is written in seconds.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.money import spend_text

if TYPE_CHECKING:
    import jinja2
from runner.outputs.atomic import fsync_dir, write_atomic
from runner.outputs.layout import REPORT_DATA_DIR, Layout
from runner.outputs.records import RecordStatus, ResultRecord, spend_of

PER_PAGE = 300
MAX_COMPARE_ROWS = 300
MAX_FAILED = 1000
MAX_MORE = 8  # thumbnails of a compare cell's other images


@functools.cache
def _templates() -> jinja2.Environment:
    """The template environment, made when the first report is written (jinja2 is imported
    then: a run does not pay for it before its end)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("runner", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _caption(record: ResultRecord) -> str:
    parts = [record["model"]]
    if record["seed"] is not None:
        parts.append(f"seed {record['seed']}")
    seconds = record["timings"].get("seconds")
    if isinstance(seconds, int | float):
        parts.append(f"{seconds:g} s")
    return " · ".join(parts)


def _tooltip(record: ResultRecord) -> str:
    params = json.dumps(record["params"], ensure_ascii=False, sort_keys=True)
    return f"{record['prompt']}\nkey {record['key']}\nparams {params}"


def _card(record: ResultRecord) -> dict[str, Any]:
    """What the page's script needs of one record."""
    files = record["files"]
    return {
        "key": record["key"],
        "status": record["status"],
        "model": record["model"],
        "seed": record["seed"],
        "prompt": record["prompt"],
        "path": files[0]["path"] if files else None,
        "error": record["error"],
        "shape": _shape(record["params"]),
        "replica": record["replica"],
    }


def _shape(params: Mapping[str, Any]) -> str | None:
    """``16:9`` or ``1024×576``: what tells two tiles of one prompt and seed apart."""
    ratio = params.get("aspect_ratio")
    if isinstance(ratio, str):
        return ratio
    width, height = params.get("width"), params.get("height")
    return f"{width}×{height}" if isinstance(width, int) and isinstance(height, int) else None


@dataclass
class _Chunks:
    """Cards written PER_PAGE to a file as they come: ``c00001.js``, ``f00001.js``, …"""

    folder: Path
    kind: str
    count: int = 0
    _rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, card: dict[str, Any]) -> None:
        self._rows.append(card)
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


@dataclass
class _Gallery:
    """Everything the page shows, gathered in one pass over the records."""

    completed: _Chunks
    failed_chunks: _Chunks
    images: int = 0
    done: int = 0
    spend: float = 0.0  # compute units, of jobs without a USD price
    spend_usd: float = 0.0
    models: dict[str, None] = field(default_factory=dict)
    seeds: dict[Any, None] = field(default_factory=dict)
    failed: list[ResultRecord] = field(default_factory=list)
    failed_count: int = 0
    prompts: dict[str, None] = field(default_factory=dict)
    more_prompts: bool = False
    cells: dict[tuple[str, str, Any], dict[str, Any]] = field(default_factory=dict)

    def add(self, record: ResultRecord) -> None:
        if record["status"] == RecordStatus.FAILED:
            self.failed_count += 1
            if len(self.failed) < MAX_FAILED:
                self.failed.append(record)
            self.models.setdefault(record["model"], None)
            self.failed_chunks.add(_card(record))
            return
        if record["status"] != RecordStatus.COMPLETED or not record["files"]:
            return
        self.done += 1
        self.images += len(record["files"])
        usd, units = spend_of(record)
        self.spend_usd += usd
        self.spend += units
        self.models.setdefault(record["model"], None)
        self.seeds.setdefault(record["seed"], None)
        self.completed.add(_card(record))
        self._compare(record)

    def _compare(self, record: ResultRecord) -> None:
        prompt = record["prompt"]
        if prompt not in self.prompts:
            if len(self.prompts) >= MAX_COMPARE_ROWS:
                self.more_prompts = True
                return
            self.prompts[prompt] = None
        for axis in ("model", "seed"):
            cell = {
                "path": record["files"][0]["path"],
                "prompt": prompt,
                "caption": _caption(record),
                "tooltip": _tooltip(record),
                "more": [],  # the cell's other images (other seeds, say), as thumbnails
            }
            first = self.cells.setdefault((prompt, axis, record[axis]), cell)
            if first is not cell and len(first["more"]) < MAX_MORE:
                first["more"].append(cell)

    def compare(self) -> dict[str, Any]:
        if not self.done:
            return {"columns": []}
        axis, columns = (
            ("model", list(self.models)) if len(self.models) > 1 else ("seed", list(self.seeds))
        )
        rows = [
            (prompt, [self.cells.get((prompt, axis, column)) for column in columns])
            for prompt in self.prompts
        ]
        return {
            "axis": axis,
            "columns": columns,
            "rows": rows,
            "more": self.more_prompts,
            "limit": MAX_COMPARE_ROWS,
        }


def write_report(root: Path, records: Iterable[ResultRecord], summary: Mapping[str, Any]) -> Path:
    """Write ``report.html`` and its ``report/`` chunks into the output folder; returns the
    page's path. The chunks are built in a fresh folder and swapped in, then the page is
    replaced atomically."""
    layout = Layout(root)
    building = root / f".{REPORT_DATA_DIR}.new"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    gallery = _Gallery(_Chunks(building, "c"), _Chunks(building, "f"))
    for record in records:
        gallery.add(record)
    gallery.completed.flush()
    gallery.failed_chunks.flush()
    page = render_page(gallery, summary)
    current, old = layout.report_data, root / f".{REPORT_DATA_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(building, current)
    fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    write_atomic(layout.report, page)
    return layout.report


def render_page(gallery: _Gallery, summary: Mapping[str, Any]) -> str:
    """The page's HTML for a gathered gallery (pure)."""
    title = f"krea-batch · {summary.get('manifest', 'results')}"
    stats: list[tuple[str, Any]] = [
        ("images", gallery.images),
        ("completed", gallery.done),
        ("failed", gallery.failed_count),
        ("models", len(gallery.models)),
        ("est. spend", spend_text(gallery.spend_usd, gallery.spend)),
    ]
    if summary.get("ended_at"):
        stats.append(("finished", str(summary["ended_at"]).replace("T", " ")[:19]))
    setup = {
        "dir": REPORT_DATA_DIR,
        "per_page": PER_PAGE,
        "completed_chunks": gallery.completed.count,
        "failed_chunks": gallery.failed_chunks.count,
    }
    return (
        _templates()
        .get_template("report.html.j2")
        .render(
            title=title,
            stats=stats,
            models=list(gallery.models),
            compare=gallery.compare(),
            failed=gallery.failed,
            failed_count=gallery.failed_count,
            setup=setup,
        )
    )
