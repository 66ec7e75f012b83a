"""Plain-text views of the catalog and of a plan, for the terminal."""

from __future__ import annotations

import json
from typing import Any

from runner.catalog import Catalog, Model
from runner.manifest.plan import Plan, spec_json
from runner.money import spend_text
from runner.sharding import shard_words
from runner.wording import counted


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _price(model: Model) -> str:
    """``$0.06`` (or a range) where a USD price is published, else compute units, else
    ``unpublished`` (a manifest's ``prices:`` can give one)."""
    dollars = sorted({rule.units for rule in model.usd_rules})
    if dollars:
        low, high = dollars[0], dollars[-1]
        return f"${low:g}" if low == high else f"${low:g}–{high:g}"
    units = sorted({rule.units for rule in model.price_rules})
    if not units:
        return "unpublished"
    low, high = units[0], units[-1]
    return (f"{low:g}" if low == high else f"{low:g}–{high:g}") + " CU"


def _condition(cond: Any) -> str:
    if "equals" in cond:
        return f"{cond['param']} {cond['equals']}"
    if "count" in cond:
        return f"{cond['count']} {cond['param']}"
    return ("with " if cond["nonempty"] else "without ") + str(cond["param"])


def _price_detail(model: Model) -> str:
    """Each USD rule, the unconditional one first: ``$0.06 per image ($0.07 with …)``."""
    if not model.usd_rules:
        return f"{_price(model)} per image"
    base = [r for r in model.usd_rules if not r.when]
    others = [r for r in model.usd_rules if r.when]
    text = f"${base[0].units:g} per image" if base else "per image"
    if others:
        text += (
            " ("
            + ", ".join(
                f"${r.units:g} {' and '.join(_condition(c) for c in r.when)}" for r in others
            )
            + ")"
        )
    return text


def catalog_table(catalog: Catalog) -> str:
    rows = [["MODEL", "ENDPOINT", "PRICE/IMAGE", "ALIASES"]]
    for model in catalog:
        aliases = ", ".join(a for a in model.aliases if "/" not in a)
        mark = "" if model.verified else " *"
        rows.append([model.id + mark, model.endpoint, _price(model), aliases])
    note = (
        "\nPrices in USD per request where Krea publishes one, else in compute units (CU)."
        "\n* not in the spec copy: from tools/catalog_overlay.yaml, which names its sources."
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
        f"  price: {_price_detail(model)}"
        + (f", about {model.average_seconds:g} s" if model.average_seconds else "")
    )
    rows = [["PARAM", "TYPE", "ALLOWED", "DEFAULT", "REQUIRED"]]
    for p in model.params:
        default = "" if p.default is None else json.dumps(p.default)
        if p.name == "seed":  # the spec's "default" seed is an example: unsent, it is random
            default = "random"
        rows.append([p.name, p.type, p.allowed(), default, "yes" if p.required else ""])
    return "\n".join(lines) + "\n\n" + _table(rows)


def _cost(usd: float, units: float, unpriced: int) -> str:
    """Dollars and compute units side by side (they are never added), and unpriced jobs."""
    if unpriced and not (usd or units):
        return "unpublished"
    return spend_text(usd, units) + (f" (+{unpriced} unpriced)" if unpriced else "")


def plan_text(plan: Plan) -> str:
    rows = [["MODEL", "JOBS", "EST. COST"]]
    for m in plan.models:
        rows.append([m.model, f"{m.jobs:,}", _cost(m.usd, m.units, m.unpriced)])
    rows.append(["total", f"{plan.jobs:,}", _cost(plan.usd, plan.units, plan.unpriced)])
    title = f"{plan.file}: {counted(plan.jobs, 'job')}"
    if plan.shard is not None:
        whole = sum(s.jobs for s in plan.shards)
        title = f"{plan.file}, {shard_words(plan.shard)}: {plan.jobs:,} of {counted(whole, 'job')}"
    parts = [title, _table(rows)]
    if plan.shard is not None:
        parts.append(_split_text(plan))
    if plan.duplicates:
        parts.append(
            f"{counted(plan.duplicates, 'duplicate job')} (same model, request and replica) "
            + ("is" if plan.duplicates == 1 else "are")
            + " run once"
        )
    parts.extend(sizes_text(plan))
    parts.extend(f"warning: {w}" for w in plan.warnings)
    for spec in plan.first:
        parts.append(json.dumps(spec_json(spec), ensure_ascii=False))
    return "\n".join(parts)


def sizes_text(plan: Plan) -> list[str]:
    """What each model is sent for each size written: a row per model, a column per size."""
    if not plan.sizes:
        return []
    sizes = list(dict.fromkeys(one.size for one in plan.sizes))
    sent: dict[str, dict[str, str]] = {}
    for one in plan.sizes:
        sent.setdefault(one.model, {})[one.size] = one.text
    rows = [["SIZES SENT", *sizes]]
    rows += [[model, *(given.get(size, "–") for size in sizes)] for model, given in sent.items()]
    return [_table(rows)]


def _split_text(plan: Plan) -> str:
    """Every shard of the split: its scheduler task, jobs and cost; each shard's limits."""
    assert plan.shard is not None
    index, count = plan.shard
    rows = [["SHARD", "TASK", "JOBS", "EST. COST"]]
    for s in plan.shards:
        mark = "  <- this one" if s.index == index else ""
        rows.append(
            [
                f"{s.index}/{count}",
                str(s.index - 1),
                f"{s.jobs:,}",
                _cost(s.usd, s.units, s.unpriced) + mark,
            ]
        )
    share = plan.per_shard
    if not share:
        limits = (
            "the shards lease the account's jobs at once, requests/s and any --budget from "
            "the coordinator, each what there is room for"
        )
    else:
        limits = (
            f"each shard runs at most {share['concurrency']:g} jobs at once and "
            f"{share['rate_limit_per_s']:g} requests/s, 1/{count} of the run's (and of any "
            "--budget)"
        )
    return (
        f"\nthe split in {count} shards (--shard I/N counts from 1; a scheduler's task T is "
        f"shard T+1):\n{_table(rows)}\n{limits}"
    )
