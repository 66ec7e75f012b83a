"""Regenerate ``runner/catalog.json`` from Krea's published OpenAPI spec.

Usage: ``python tools/sync_catalog.py [tests/data/krea-openapi.json]``

The spec is the source of every endpoint, request schema and price; this script only adds
what the spec does not hold: short model ids, friendly aliases, and the Krea 2 models that
DESIGN.md documents but the published spec does not list yet.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "tests" / "data" / "krea-openapi.json"
OUTPUT = ROOT / "runner" / "catalog.json"
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
    "krea-2-medium": ["krea-2", "krea2"],
    "krea-2-large": ["krea2-large"],
}

# Krea 2 is documented in DESIGN.md (parameter names only) but absent from the published spec;
# the ranges below are our assumption and the catalog marks these entries as unverified.
_KREA2_PROPERTIES: dict[str, Any] = {
    "prompt": {"type": "string", "minLength": 1, "maxLength": 1800},
    "aspect_ratio": {
        "type": "string",
        "enum": ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9"],
        "default": "1:1",
    },
    "resolution": {"type": "string", "enum": ["1K", "2K"], "default": "1K"},
    "seed": {"type": "number"},
    "creativity": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
    "styles": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "strength": {"type": "number", "minimum": -2, "maximum": 2},
            },
            "required": ["id", "strength"],
        },
    },
    "image_style_references": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "strength": {"type": "number", "minimum": -2, "maximum": 2},
                "url": {"type": "string", "format": "uri"},
            },
            "required": ["strength"],
        },
    },
}
EXTRA_MODELS = [
    {
        "id": f"krea-2-{size}",
        "name": f"Krea 2 {size.capitalize()}",
        "endpoint": f"{PREFIX}krea/krea-2/{size}",
        "description": "Krea's own model (from DESIGN.md; not in the published spec).",
        "schema": {
            "type": "object",
            "properties": _KREA2_PROPERTIES,
            "required": ["prompt"],
            "additionalProperties": False,
        },
        "price": {"rules": [], "average_seconds": None},
        "renamed_fields": {
            "aspectRatio": "aspect_ratio",
            "imageStyleRefs": "image_style_references",
        },
        "verified": False,
    }
    for size in ("medium", "large")
]


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


def build(spec: dict[str, Any]) -> dict[str, Any]:
    models = from_spec(spec) + EXTRA_MODELS
    for model in models:
        provider_path = model["endpoint"].removeprefix(PREFIX)
        model["aliases"] = [*ALIASES.get(model["id"], []), provider_path]
    models.sort(key=lambda m: m["id"])
    return {"source": f"Krea OpenAPI {spec['info']['version']}", "models": models}


def main() -> None:
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC
    catalog = build(json.loads(spec_path.read_text()))
    OUTPUT.write_text(json.dumps(catalog, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(catalog['models'])} models to {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
