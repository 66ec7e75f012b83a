"""``report.html``: a self-contained gallery of a run, with a side-by-side compare view.

Everything the page needs is inline (no CDN, no fonts to fetch); images are linked by their
paths relative to the output folder, so the folder can be zipped and opened anywhere.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.money import spend_text
from runner.outputs import read_records, write_atomic

REPORT_NAME = "report.html"
MAX_GALLERY = 5000  # more cards than this make a page no browser scrolls happily
MAX_COMPARE_ROWS = 300
MAX_FAILED = 1000

_CSS = """
:root { color-scheme: light dark; --bg: #f6f6f4; --fg: #1d1d1f; --card: #fff; --muted: #6b6b70;
  --line: #e2e2e0; --accent: #3b5bdb; --bad: #c92a2a; }
@media (prefers-color-scheme: dark) { :root { --bg: #141416; --fg: #ececec; --card: #1e1e22;
  --muted: #9a9aa2; --line: #2c2c31; --accent: #748ffc; --bad: #ff6b6b; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--fg); }
header { padding: 20px 28px 8px; }
h1 { margin: 0 0 6px; font-size: 22px; }
.stats { display: flex; flex-wrap: wrap; gap: 18px; color: var(--muted); }
.stats b { color: var(--fg); font-size: 16px; }
nav { display: flex; gap: 4px; padding: 12px 28px 0; border-bottom: 1px solid var(--line); }
nav button { font: inherit; border: 0; background: none; color: var(--muted); padding: 8px 14px;
  border-bottom: 2px solid transparent; cursor: pointer; }
nav button.on { color: var(--fg); border-color: var(--accent); }
section { display: none; padding: 20px 28px 40px; }
section.on { display: block; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  overflow: hidden; }
.card img, td img { display: block; width: 100%; height: 200px; object-fit: contain;
  background: repeating-conic-gradient(#8881 0 25%, transparent 0 50%) 0 0 / 16px 16px;
  cursor: zoom-in; }
.meta { padding: 8px 10px 10px; }
.prompt { display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical;
  overflow: hidden; }
.sub { color: var(--muted); font-size: 12px; margin-top: 4px; }
table { border-collapse: collapse; }
th, td { border: 1px solid var(--line); padding: 6px; vertical-align: top; }
th { background: var(--card); font-weight: 600; text-align: left; }
td.cell { width: 220px; min-width: 180px; background: var(--card); }
td.cell img { height: 180px; }
th.row { max-width: 280px; font-weight: 400; }
.missing { color: var(--muted); text-align: center; padding-top: 70px; height: 180px; }
.failed td { font-size: 13px; }
.failed .error { color: var(--bad); }
.note { color: var(--muted); margin: 0 0 12px; }
#zoom { position: fixed; inset: 0; background: #000d; display: none; align-items: center;
  justify-content: center; cursor: zoom-out; }
#zoom.on { display: flex; }
#zoom img { max-width: 94vw; max-height: 94vh; }
"""

_JS = """
for (const b of document.querySelectorAll('nav button')) b.onclick = () => {
  for (const x of document.querySelectorAll('nav button, section')) x.classList.remove('on');
  b.classList.add('on'); document.getElementById(b.dataset.tab).classList.add('on');
};
const zoom = document.getElementById('zoom'), big = zoom.querySelector('img');
document.addEventListener('click', e => {
  if (e.target.matches('.card img, td img')) { big.src = e.target.src; zoom.classList.add('on'); }
  else if (e.target.closest('#zoom')) zoom.classList.remove('on');
});
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _caption(record: Mapping[str, Any]) -> str:
    timings = record.get("timings") or {}
    parts = [record.get("model", "")]
    if record.get("seed") is not None:
        parts.append(f"seed {record['seed']}")
    if timings.get("seconds") is not None:
        parts.append(f"{timings['seconds']:.1f} s")
    if record.get("cost_units") is not None:
        parts.append(f"{record['cost_units']:g} CU")
    return " · ".join(str(p) for p in parts if p != "")


def _tooltip(record: Mapping[str, Any]) -> str:
    lines = [record.get("prompt", ""), _caption(record), f"key {record.get('key')}"]
    params = record.get("params") or {}
    if params:
        lines.append(json.dumps(params, ensure_ascii=False))
    return "\n".join(lines)


def _img(record: Mapping[str, Any]) -> str:
    path = record["files"][0]["path"]
    return f'<img loading="lazy" src="{_e(path)}" alt="{_e(record.get("prompt"))}">'


def _card(record: Mapping[str, Any]) -> str:
    return (
        f'<div class="card" title="{_e(_tooltip(record))}">{_img(record)}'
        f'<div class="meta"><div class="prompt">{_e(record.get("prompt"))}</div>'
        f'<div class="sub">{_e(_caption(record))}</div></div></div>'
    )


class _Gallery:
    """What the page shows, gathered in one pass with bounded memory (runs can be huge)."""

    def __init__(self) -> None:
        self.images = self.completed = 0
        self.spend = 0.0  # compute units, of jobs without a USD price
        self.spend_usd = 0.0
        self.models: dict[str, None] = {}
        self.seeds: dict[Any, None] = {}
        self.cards: list[str] = []
        self.failed: list[Mapping[str, Any]] = []
        self.failed_count = 0
        self.prompts: dict[str, None] = {}
        self.more_prompts = False
        self.cells: dict[tuple[str, str, Any], Mapping[str, Any]] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        if record.get("status") == "failed":
            self.failed_count += 1
            if len(self.failed) < MAX_FAILED:
                self.failed.append(record)
            return
        if record.get("status") != "completed" or not record.get("files"):
            return
        self.completed += 1
        self.images += len(record["files"])
        if record.get("cost_usd") is not None:
            self.spend_usd += record["cost_usd"]
        else:
            self.spend += record.get("cost_units") or 0.0
        self.models.setdefault(record["model"], None)
        self.seeds.setdefault(record.get("seed"), None)
        if len(self.cards) < MAX_GALLERY:
            self.cards.append(_card(record))
        prompt = record["prompt"]
        if prompt not in self.prompts:
            if len(self.prompts) >= MAX_COMPARE_ROWS:
                self.more_prompts = True
                return
            self.prompts[prompt] = None
        small = {
            k: record.get(k)
            for k in ("prompt", "model", "seed", "files", "cost_units", "timings", "key", "params")
        }
        self.cells.setdefault((prompt, "model", record["model"]), small)
        self.cells.setdefault((prompt, "seed", record.get("seed")), small)

    def compare(self) -> str:
        if not self.completed:
            return '<p class="note">No images yet.</p>'
        axis, columns = (
            ("model", list(self.models)) if len(self.models) > 1 else ("seed", list(self.seeds))
        )
        head = "".join(f"<th>{_e(axis)} {_e(c)}</th>" for c in columns)
        rows = []
        for prompt in self.prompts:
            tds = []
            for column in columns:
                cell = self.cells.get((prompt, axis, column))
                if cell is None:
                    tds.append('<td class="cell"><div class="missing">—</div></td>')
                else:
                    tds.append(
                        f'<td class="cell" title="{_e(_tooltip(cell))}">{_img(cell)}'
                        f'<div class="sub">{_e(_caption(cell))}</div></td>'
                    )
            rows.append(f'<tr><th class="row">{_e(prompt)}</th>{"".join(tds)}</tr>')
        note = (
            f'<p class="note">The first {MAX_COMPARE_ROWS} prompts.</p>'
            if self.more_prompts
            else ""
        )
        return (
            f'{note}<p class="note">Prompts as rows, {_e(axis)}s as columns.</p>'
            f"<table><tr><th>prompt</th>{head}</tr>{''.join(rows)}</table>"
        )

    def failures(self) -> str:
        if not self.failed:
            return '<p class="note">No failed jobs.</p>'
        rows = "".join(
            f"<tr><td>{_e(r.get('key'))}</td><td>{_e(r.get('model'))}</td>"
            f'<td>{_e(r.get("prompt"))}</td><td class="error">{_e(r.get("error"))}</td></tr>'
            for r in self.failed
        )
        note = (
            f'<p class="note">The first {MAX_FAILED:,} of {self.failed_count:,}.</p>'
            if self.failed_count > len(self.failed)
            else ""
        )
        return (
            f'{note}<table class="failed"><tr><th>key</th><th>model</th><th>prompt</th>'
            f"<th>reason</th></tr>{rows}</table>"
        )


def render_report(records: Iterable[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """The whole page as text (pure); reads ``records`` once."""
    gallery = _Gallery()
    for record in records:
        gallery.add(record)
    title = f"krea-batch · {summary.get('manifest', 'results')}"
    stats = [
        ("images", gallery.images),
        ("completed", gallery.completed),
        ("failed", gallery.failed_count),
        ("models", len(gallery.models)),
        ("est. spend", spend_text(gallery.spend_usd, gallery.spend)),
    ]
    if summary.get("ended_at"):
        stats.append(("finished", str(summary["ended_at"]).replace("T", " ")[:19]))
    gallery_note = ""
    if gallery.completed > MAX_GALLERY:
        gallery_note = (
            f'<p class="note">The first {MAX_GALLERY:,} of {gallery.completed:,} images.</p>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1><div class="stats">
{"".join(f"<span>{_e(k)} <b>{_e(v)}</b></span>" for k, v in stats)}
</div></header>
<nav><button class="on" data-tab="gallery">Gallery</button>
<button data-tab="compare">Compare</button>
<button data-tab="failures">Failed ({gallery.failed_count})</button></nav>
<section id="gallery" class="on">{gallery_note}<div class="grid">
{"".join(gallery.cards)}
</div></section>
<section id="compare">{gallery.compare()}</section>
<section id="failures">{gallery.failures()}</section>
<div id="zoom"><img alt=""></div>
<script>{_JS}</script>
</body></html>
"""


def write_report(
    root: Path, records: Iterable[Mapping[str, Any]], summary: Mapping[str, Any]
) -> Path:
    """Write ``report.html`` into the output folder atomically; returns its path."""
    path = root / REPORT_NAME
    write_atomic(path, render_report(records, summary))
    return path


def load_records(root: Path) -> list[dict[str, Any]]:
    """The current record of each job in ``results.jsonl`` (the last one wins)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_records(root / "results.jsonl"):
        latest[record["key"]] = record
    return list(latest.values())
