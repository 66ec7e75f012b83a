"""Regenerate ``runner/catalog.json`` from Krea's published OpenAPI spec.

Usage: ``python tools/sync_catalog.py [tests/data/krea-openapi.json]``

The spec is the source of every endpoint, request schema and compute-unit price; this script
adds short model ids and friendly aliases, then applies ``tools/catalog_overlay.yaml``: the
corrections Krea made since the spec copy and the models it lacks (Krea 2), each with its
sources, and prices in USD. Give a newer ``openapi.json`` the day one is at hand: an overlay
entry whose ``expect`` no longer holds stops the script, so stale corrections are noticed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "tests" / "data" / "krea-openapi.json"
OUTPUT = ROOT / "runner" / "catalog.json"
OVERLAY = ROOT / "tools" / "catalog_overlay.yaml"
PREFIX = "/generate/image/"

# Short ids where the last path segment alone would be unclear.
ID_OVERRIDES = {
    "runway/gen-4-image": "runway-gen-4-image",
    "luma/uni-1": "luma-uni-1",
    "qwen/2512": "qwen-2512",
}

ALIASES: dict[str, list[str]] = {
    "flux-1-dev": ["flux", "flux-dev"],
    "flux-1-kontext-dev": ["flux-kontext", "kontext"],
    "flux-1.1-pro": ["flux-pro"],
    "flux-1.1-pro-ultra": ["flux-pro-ultra", "flux-ultra"],
    "nano-banana-pro": ["nano-banana-3"],
    "ideogram-2-turbo": ["ideogram-2"],
    "ideogram-3": ["ideogram"],
    "imagen-4": ["imagen"],
    "runway-gen-4-image": ["gen-4-image", "runway-gen-4"],
    "gpt-image": ["gpt-image-1", "chatgpt-image"],
    "gpt-image-2": ["chatgpt-2"],
    "luma-uni-1": ["uni-1"],
    "seedream-4": ["seedream"],
    "qwen-2512": ["qwen", "qwen-image"],
    "z-image": ["z-image-turbo"],
}


def model_id(path: str) -> str:
    rest = path.removeprefix(PREFIX)
    return ID_OVERRIDES.get(rest, rest.rsplit("/", 1)[-1])


def _table(description: str) -> list[list[str]]:
    rows = [line for line in description.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return [r for r in cells if not all(set(c) <= set("-:") for c in r)]


def _number(text: str) -> float | None:
    match = re.search(r"\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None


def _condition(header: str, cell: str, properties: dict[str, Any]) -> dict[str, Any] | None:
    """Turn one table cell into a condition on the request body (None: no condition)."""
    key = header.lower().replace(" ", "_")
    if key in properties:
        return {"param": key, "equals": cell}
    if header == "Reference Images":
        return {"param": "style_images", "count": int(cell)}
    if header == "Character Reference":
        return {"param": "character_reference_images", "nonempty": cell == "Yes"}
    if header == "Model":
        return None
    raise SystemExit(f"unknown price column {header!r}: teach sync_catalog.py about it")


def price(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    """Parse the spec's markdown price table into rules: the first rule that matches wins."""
    table = _table(description)
    if not table:
        return {"rules": [], "average_seconds": None}
    header, body = table[0], table[1:]
    units_col = header.index("Compute Units")
    time_col = (
        header.index("Average Completion Time") if "Average Completion Time" in header else None
    )
    rules = []
    for row in body:
        when = [
            cond
            for i, cell in enumerate(row)
            if i not in (units_col, time_col)
            and (cond := _condition(header[i], cell, properties)) is not None
        ]
        rules.append({"when": when, "units": _number(row[units_col])})
    seconds = _number(body[0][time_col]) if time_col is not None else None
    return {"rules": rules, "average_seconds": seconds}


def from_spec(spec: dict[str, Any]) -> list[dict[str, Any]]:
    models = []
    for path, item in spec["paths"].items():
        if not path.startswith(PREFIX):
            continue
        post = item["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        models.append(
            {
                "id": model_id(path),
                "name": post.get("summary", model_id(path)),
                "endpoint": path,
                "description": post["description"].split("\n", 1)[0].strip(),
                "schema": schema,
                "price": price(post["description"], schema.get("properties", {})),
                "renamed_fields": {
                    a["from"]: a["to"] for a in post.get("x-krea-deprecated-field-aliases", [])
                },
                "verified": True,
            }
        )
    return models


def _new_model(model_id: str, fix: dict[str, Any]) -> dict[str, Any]:
    new = fix["new"]
    return {
        "id": model_id,
        "name": new["name"],
        "endpoint": new["endpoint"],
        "description": new["description"],
        "schema": {},
        "price": {"rules": [], "average_seconds": new.get("average_seconds")},
        "renamed_fields": {},
        "verified": False,
    }


def _check_expected(model: dict[str, Any], expect: dict[str, Any]) -> None:
    for key, value in expect.items():
        if model["schema"].get(key) != value:
            raise SystemExit(
                f"overlay: {model['id']} expects the spec's {key} to be {value!r}, and it is "
                f"{model['schema'].get(key)!r}: the spec has moved, review the overlay entry"
            )


def apply_overlay(models: list[dict[str, Any]], overlay: dict[str, Any]) -> list[dict[str, Any]]:
    """The generated models with the overlay's corrections and additions, sources kept."""
    by_id = {model["id"]: model for model in models}
    for model_id, fix in overlay["models"].items():
        if "new" in fix:
            if model_id in by_id:
                raise SystemExit(f"overlay: {model_id} is in the spec now; drop its 'new' entry")
            by_id[model_id] = _new_model(model_id, fix)
        elif model_id not in by_id:
            raise SystemExit(f"overlay: {model_id} is not in the spec")
        model = by_id[model_id]
        _check_expected(model, fix.get("expect", {}))
        schema = json.loads(json.dumps(fix.get("schema", model["schema"])))  # a copy
        properties = schema.setdefault("properties", {})
        properties.update(fix.get("properties", {}))
        for name in fix.get("remove", ()):
            properties.pop(name)
        for old, new in fix.get("rename", {}).items():
            properties[new] = properties.pop(old)
            model["renamed_fields"][old] = new
            schema["required"] = [new if r == old else r for r in schema.get("required", [])]
        if "required" in fix:
            schema["required"] = fix["required"]
        model["schema"] = schema
        if "usd" in fix:
            model["price"]["usd_rules"] = fix["usd"]
        model["source"] = fix["source"]
    return list(by_id.values())


def build(spec: dict[str, Any], overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    if overlay is None:
        overlay = yaml.safe_load(OVERLAY.read_text())
    models = apply_overlay(from_spec(spec), overlay)
    extra_aliases = {
        m: fix["new"].get("aliases", []) for m, fix in overlay["models"].items() if "new" in fix
    }
    for model in models:
        provider_path = model["endpoint"].removeprefix(PREFIX)
        named = ALIASES.get(model["id"], []) + extra_aliases.get(model["id"], [])
        model["aliases"] = [*named, provider_path]
    models.sort(key=lambda m: m["id"])
    return {"source": f"Krea OpenAPI {spec['info']['version']}", "models": models}


def main() -> None:
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC
    catalog = build(json.loads(spec_path.read_text()))
    OUTPUT.write_text(json.dumps(catalog, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(catalog['models'])} models to {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
