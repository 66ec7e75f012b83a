"""Plain-text views of the catalog and of a plan, for the terminal."""

from __future__ import annotations

import json

from runner.catalog import Catalog, Model
from runner.plan import Plan, spec_json


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _price(model: Model) -> str:
    units = sorted({rule.units for rule in model.price_rules})
    if not units:
        return "?"
    low, high = units[0], units[-1]
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def catalog_table(catalog: Catalog) -> str:
    rows = [["MODEL", "ENDPOINT", "CU/IMAGE", "ALIASES"]]
    for model in catalog:
        aliases = ", ".join(a for a in model.aliases if "/" not in a)
        mark = "" if model.verified else " *"
        rows.append([model.id + mark, model.endpoint, _price(model), aliases])
    note = (
        "\nCU = Krea compute units. * not in the published spec: parameters assumed."
        if any(not m.verified for m in catalog)
        else ""
    )
    return _table(rows) + note


def model_detail(model: Model) -> str:
    lines = [f"{model.name} ({model.id})", f"  endpoint: POST {model.endpoint}"]
    if model.description:
        lines.append(f"  {model.description}")
    lines.append(f"  aliases: {', '.join(model.aliases)}")
    lines.append(
        f"  price: {_price(model)} compute units per image"
        + (f", about {model.average_seconds:g} s" if model.average_seconds else "")
    )
    if not model.verified:
        lines.append("  not in the published spec: its parameters are assumed")
    rows = [["PARAM", "TYPE", "ALLOWED", "DEFAULT", "REQUIRED"]]
    for p in model.params:
        default = "" if p.default is None else json.dumps(p.default)
        rows.append([p.name, p.type, p.allowed(), default, "yes" if p.required else ""])
    return "\n".join(lines) + "\n\n" + _table(rows)


def plan_text(plan: Plan) -> str:
    rows = [["MODEL", "JOBS", "EST. CU"]]
    for m in plan.models:
        cost = f"{m.units:,.1f}" + (f" (+{m.unpriced} unpriced)" if m.unpriced else "")
        rows.append([m.model, f"{m.jobs:,}", cost])
    total = f"{plan.units:,.1f}" + (f" (+{plan.unpriced} unpriced)" if plan.unpriced else "")
    rows.append(["total", f"{plan.jobs:,}", total])
    parts = [f"{plan.file}: {plan.jobs:,} jobs", _table(rows)]
    if plan.duplicates:
        parts.append(
            f"{plan.duplicates:,} duplicate jobs (same model, request and replica) are run once"
        )
    parts.extend(f"warning: {w}" for w in plan.warnings)
    for spec in plan.first:
        parts.append(json.dumps(spec_json(spec), ensure_ascii=False))
    return "\n".join(parts)
