"""The manifest's structure as JSON Schema, and a violation as a message at its path."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from runner.manifest.located_yaml import join
from runner.manifest.model import MAX_SEED, Context
from runner.settings import SETTING_NAMES

_SEED = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_SEED,
    "x-allowed": f"a whole number 0–{MAX_SEED}",
}


_SEED_OR_AUTO = {"anyOf": [_SEED, {"const": "auto"}], "x-allowed": "a whole number or 'auto'"}


_SCALAR = {"type": ["string", "number", "boolean"], "x-allowed": "a text, number or true/false"}


_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}


_SIZE = {
    "type": "string",
    "pattern": r"(?a)^\s*(\d+\s*[xX×]\s*\d+|\d+(\.\d+)?\s*:\s*\d+(\.\d+)?)\s*$",
    "x-allowed": "WIDTHxHEIGHT (1024x576) or an aspect ratio (16:9)",
}


_COMMON = {
    "model": {"type": "string"},
    "models": _STRINGS,
    "params": {"type": "object"},
    "model_params": {"type": "object", "additionalProperties": {"type": "object"}},
    "sizes": {"type": "array", "items": _SIZE, "minItems": 1},
    "seed": _SEED_OR_AUTO,
    "seeds": {"type": "array", "items": _SEED, "minItems": 1},
    "count": {"type": "integer", "minimum": 1},
}


_ENTRY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_COMMON,
        "name": {"type": "string", "minLength": 1},
        "prompt": {"type": "string"},
        "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "prompts_file": {"type": "string", "minLength": 1},
        "column": {"type": "string", "minLength": 1},
        "prompt_template": {"type": "string", "minLength": 1},
        "params_from": {
            "anyOf": [
                {"const": "all"},
                {"type": "object", "additionalProperties": {"type": "string"}},
            ],
            "x-allowed": "all, or a mapping of parameter to column ({seed: seed, ar: ar})",
        },
        "vars": {
            "type": "object",
            "additionalProperties": {
                "anyOf": [_SCALAR, {"type": "array", "items": _SCALAR, "minItems": 1}],
                "x-allowed": "a value or a non-empty list of values",
            },
        },
    },
}


_RUN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {name: {} for name in SETTING_NAMES},
}


MANIFEST_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "jobs"],
    "properties": {
        "version": {"const": 1, "x-allowed": "1"},
        "defaults": {"type": "object", "additionalProperties": False, "properties": _COMMON},
        "jobs": {"type": "array", "items": _ENTRY, "minItems": 1},
        "run": _RUN,
        "prices": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0},
            "x-allowed": "a mapping of model to its USD price per image, e.g. {seedream-4: 0.03}",
        },
    },
}


_VALIDATOR = Draft202012Validator(MANIFEST_SCHEMA)


def check_structure(ctx: Context, data: dict[str, Any]) -> None:
    """Every structure problem of the manifest at once (up to MAX_PROBLEMS)."""
    for error in _VALIDATOR.iter_errors(data):
        leaf = best_match([error], key=lambda e: -len(e.path))  # inside anyOf: the closest
        ctx.report(ctx.error(*_describe(leaf, _path_of(leaf.absolute_path))))
    ctx.raise_problems()


def _path_of(parts: Sequence[Any]) -> str:
    path = ""
    for part in parts:
        path = join(path, part)
    return path


def _describe(error: ValidationError, path: str) -> tuple[str, str]:
    """A (path, message) a user can act on, for a manifest structure error."""
    value: Any = error.instance
    schema: Any = error.schema
    rule = error.validator
    if rule == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        unknown = sorted(k for k in value if k not in allowed)[0]
        close = difflib.get_close_matches(str(unknown), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return join(path, unknown), f"unknown key; {hint}(allowed: {', '.join(allowed)})"
    if rule == "required":
        missing = [k for k in schema["required"] if k not in value]
        return path, f"missing required key '{missing[0]}'"
    if "x-allowed" in schema:
        return path, f"{value!r} is not allowed: expected {schema['x-allowed']}"
    if rule == "minItems":
        return path, "must not be empty"
    if rule == "type":
        kind = schema["type"]
        wanted = (
            {
                "object": "a mapping",
                "array": "a list",
                "string": "a text",
                "integer": "a whole number",
            }.get(kind, kind)
            if isinstance(kind, str)
            else kind
        )
        return path, f"{value!r} is not allowed: expected {wanted}"
    if rule == "minimum":
        return path, f"{value!r} is below the minimum {schema['minimum']}"
    return path, str(error.message)
