"""``report.html``: the gallery of a run, with filters, pages and a side-by-side compare view.

The page is a jinja2 template (autoescaped); the records it shows are written beside it in
``report/`` as small script files of PER_PAGE records each (scripts, not JSON, so that the
page works opened from disk, where browsers refuse to fetch files). The first page loads
one of them; filters load the others on demand. Nothing is fetched from elsewhere; images
are linked by their paths relative to the output folder, so the folder can be zipped and
opened anywhere. Writing reads the records once and holds only the compare table and the
first failures: a 100,000-job report is written in seconds.

Images inside shards (webdataset, parquet) cannot be linked: the first MAX_THUMBS of them get a
small JPEG thumbnail in ``report/thumbs/`` (read from their shard by member, a shard opened
once; kept from the previous report where it is there already), so that the first pages and
the compare view show pictures, and a 200,000-job folder's report stays a few megabytes. The
tiles beyond them say which shard holds the image.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import shutil
import tarfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from PIL import Image

from runner.money import spend_text

if TYPE_CHECKING:
    import jinja2

    from runner.outputs.trees import Tree
from runner.outputs.atomic import fsync_dir, write_atomic
from runner.outputs.layout import REPORT_DATA_DIR, Layout
from runner.outputs.report_cards import (
    PER_PAGE,
    Chunks,
    ambiguous_card,
    ambiguous_row,
    candidate_images,
    caption,
    card,
    tooltip,
)
from runner.outputs.shard_files import member_of, read_members
from runner.state.records import RecordStatus, ResultRecord, spend_of

log = logging.getLogger(__name__)

MAX_COMPARE_ROWS = 300
MAX_FAILED = 1000
MAX_MORE = 8  # thumbnails of a compare cell's other images
MAX_THUMBS = 1200  # images inside shards shown as thumbnails: four pages' worth
THUMBS_DIR = "thumbs"
THUMB_SIDE = 256


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


@dataclass
class _Thumbs:
    """The shard members the page shows as thumbnails: shard → [(member, thumbnail name)]."""

    wanted: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    count: int = 0

    def image(self, record: ResultRecord) -> tuple[str | None, str | None]:
        """A record's picture for the page: a loose file's path, a thumbnail's, or none."""
        files = record.files
        if not files:
            return None, None
        place = member_of(files[0].path)
        if place is None:
            return files[0].path, None
        if self.count >= MAX_THUMBS:
            return None, place[0]
        self.count += 1
        name = hashlib.sha256(record.key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        self.wanted.setdefault(place[0], []).append((place[1], f"{name}.jpg"))
        return f"{REPORT_DATA_DIR}/{THUMBS_DIR}/{name}.jpg", place[0]

    def make(self, folder: Path, earlier: Path, shards: Tree) -> None:
        """Write the thumbnails into ``folder`` (those of the ``earlier`` report linked)."""
        if not self.wanted:
            return
        folder.mkdir()
        for shard, members in self.wanted.items():
            todo: dict[str, str] = {}
            for member, name in members:
                try:
                    os.link(earlier / name, folder / name)
                except OSError:
                    todo[member] = name
            if not todo:
                continue
            try:
                with shards.open(shard) as handle:
                    for member, data in read_members(handle, Path(shard).suffix, set(todo)):
                        _thumbnail(data, folder / todo[member])
            except (OSError, tarfile.TarError, ValueError) as exc:
                log.warning("report: cannot read %s/%s for its thumbnails: %s", shards, shard, exc)


def _thumbnail(data: bytes, target: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # a JPEG decodes at a smaller scale
                image.thumbnail((THUMB_SIDE, THUMB_SIDE))
                image.convert("RGB").save(target, "JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("report: no thumbnail for %s: %s", target.name, exc)


@dataclass
class _Gallery:
    """Everything the page shows, gathered in one pass over the records."""

    completed: Chunks
    failed_chunks: Chunks
    ambiguous_chunks: Chunks
    images: int = 0
    done: int = 0
    spend: float = 0.0  # compute units, of jobs without a USD price
    spend_usd: float = 0.0
    models: dict[str, None] = field(default_factory=dict)
    seeds: dict[Any, None] = field(default_factory=dict)
    failed: list[ResultRecord] = field(default_factory=list)
    failed_count: int = 0
    ambiguous: list[dict[str, Any]] = field(default_factory=list)  # the first, as table rows
    ambiguous_held: list[ResultRecord] = field(default_factory=list)  # until every one is read
    unmatched: dict[str, str] = field(default_factory=dict)  # their candidates' images, by stem
    prompts: dict[str, None] = field(default_factory=dict)
    more_prompts: bool = False
    cells: dict[tuple[str, str, Any], dict[str, Any]] = field(default_factory=dict)
    thumbs: _Thumbs = field(default_factory=_Thumbs)

    def add(self, record: ResultRecord) -> None:
        if record.status == RecordStatus.FAILED:
            self.failed_count += 1
            if len(self.failed) < MAX_FAILED:
                self.failed.append(record)
            self.models.setdefault(record.model, None)
            self.failed_chunks.add(card(record, (None, None)))
            return
        usd, units = spend_of(record)  # an ambiguous job's billed candidates too
        self.spend_usd += usd
        self.spend += units
        if record.status == RecordStatus.AMBIGUOUS:
            self._ambiguous(record)
            return
        if record.status != RecordStatus.COMPLETED or not record.files:
            return
        self.done += 1
        self.images += len(record.files)
        self.models.setdefault(record.model, None)
        self.seeds.setdefault(record.seed, None)
        image = self.thumbs.image(record)
        self.completed.add(card(record, image))
        self._compare(record, image[0])

    def _ambiguous(self, record: ResultRecord) -> None:
        """A job no listing could tell apart: held until every record is read (its
        candidates' images may be listed in another's), never compared."""
        self.ambiguous_held.append(record)
        for entry in record.files:
            if member_of(entry.path) is None:  # loose files, in shard folders too
                self.unmatched.setdefault(PurePosixPath(entry.path).stem, entry.path)
        self.models.setdefault(record.model, None)

    def end(self) -> None:
        """Write the last chunks, the ambiguous jobs' with each one's candidates' images."""
        for record in self.ambiguous_held:
            images = candidate_images(record, self.unmatched)
            if len(self.ambiguous) < MAX_FAILED:
                self.ambiguous.append(ambiguous_row(record, images))
            self.ambiguous_chunks.add(ambiguous_card(record, images))
        for chunks in (self.completed, self.failed_chunks, self.ambiguous_chunks):
            chunks.flush()

    def _compare(self, record: ResultRecord, path: str | None) -> None:
        prompt = record.prompt
        if prompt not in self.prompts:
            if len(self.prompts) >= MAX_COMPARE_ROWS:
                self.more_prompts = True
                return
            self.prompts[prompt] = None
        for axis in ("model", "seed"):
            cell: dict[str, Any] = {
                "path": path,
                "prompt": prompt,
                "caption": caption(record),
                "tooltip": tooltip(record),
                "more": [],  # the cell's other images (other seeds, say), as thumbnails
            }
            first = self.cells.setdefault((prompt, axis, getattr(record, axis)), cell)
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


def write_report(
    root: Path,
    records: Iterable[ResultRecord],
    summary: Mapping[str, Any],
    *,
    shards: Tree | None = None,
) -> Path:
    """Write ``report.html`` and its ``report/`` chunks into the output folder; returns the
    page's path. The chunks are built in a fresh folder and swapped in, then the page is
    replaced atomically. ``shards``: where the records' shards are (the folder itself, or
    the URL whose report is written here)."""
    layout = Layout(root)
    building = root / f".{REPORT_DATA_DIR}.new"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    gallery = _Gallery(Chunks(building, "c"), Chunks(building, "f"), Chunks(building, "a"))
    for record in records:
        gallery.add(record)
    gallery.end()
    current, old = layout.report_data, root / f".{REPORT_DATA_DIR}.old"
    if shards is None:
        from runner.outputs.trees import Tree

        shards = Tree(str(root))
    gallery.thumbs.make(building / THUMBS_DIR, current / THUMBS_DIR, shards)
    page = render_page(gallery, summary)
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
        *([("ambiguous", len(gallery.ambiguous_held))] if gallery.ambiguous_held else []),
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
        "ambiguous_chunks": gallery.ambiguous_chunks.count,
    }
    retry = (  # what sends the ambiguous jobs again, once it has said the worst case
        f"krea-batch run {summary.get('manifest') or 'MANIFEST'} "
        f"--out {summary.get('out') or 'OUT'} --retry-ambiguous"
    )
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
            ambiguous=gallery.ambiguous,
            ambiguous_count=len(gallery.ambiguous_held),
            candidate_images=len(gallery.unmatched),
            retry=retry,
            setup=setup,
        )
    )
