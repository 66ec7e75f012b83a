"""The model catalog: every Krea text-to-image model, its endpoint, parameters and price.

The facts live in ``catalog.json``, generated from Krea's OpenAPI spec and the corrections of
``tools/catalog_overlay.yaml`` by ``tools/sync_catalog.py``; this module gives them types,
resolves names and aliases, checks request bodies against each model's JSON Schema and
estimates prices: in USD where Krea publishes one, in compute units where that is all the
spec holds. The two are never added together.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from runner.errors import UsageError

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Param:
    """One request field of a model, as the catalog describes it."""

    name: str
    type: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    default: Any = None
    description: str = ""

    def allowed(self) -> str:
        """A short human text of what values this parameter takes."""
        if self.enum is not None:
            return "one of " + ", ".join(str(v) for v in self.enum if v is not None)
        if self.minimum is not None and self.maximum is not None:
            return f"{self.type} {_num(self.minimum)}–{_num(self.maximum)}"
        if self.maximum is not None:
            return f"{self.type} ≤ {_num(self.maximum)}"
        if self.minimum is not None:
            return f"{self.type} ≥ {_num(self.minimum)}"
        return self.type


@dataclass(frozen=True, slots=True)
class PriceRule:
    """``units`` compute units when every condition in ``when`` holds for the request body."""

    when: tuple[Mapping[str, Any], ...]
    units: float


@dataclass(frozen=True)
class Model:
    """A text-to-image model of the Krea API."""

    id: str
    name: str
    endpoint: str
    description: str
    aliases: tuple[str, ...]
    schema: Mapping[str, Any] = field(repr=False)
    price_rules: tuple[PriceRule, ...] = ()
    average_seconds: float | None = None
    renamed_fields: Mapping[str, str] = field(default_factory=dict)
    verified: bool = True  # from the spec copy (False: added by the overlay, from its sources)
    usd_rules: tuple[PriceRule, ...] = ()  # ``units`` in US dollars per request
    source: str = ""  # where the overlay's corrections come from

    @cached_property
    def properties(self) -> Mapping[str, Any]:
        props: Mapping[str, Any] = self.schema.get("properties", {})
        return props

    @cached_property
    def params(self) -> tuple[Param, ...]:
        required = set(self.schema.get("required", ()))
        return tuple(_param(name, spec, name in required) for name, spec in self.properties.items())

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def takes_seed(self) -> bool:
        return "seed" in self.properties

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(_whole_counts(self.schema))

    def problems(self, body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Yield ``(field path, message)`` for everything wrong with a request body."""
        for error in sorted(self._validator.iter_errors(body), key=lambda e: list(e.path)):
            yield from self._describe(error, body)

    def _describe(
        self, error: ValidationError, body: Mapping[str, Any]
    ) -> Iterator[tuple[str, str]]:
        path = _field_path(error.absolute_path)
        value: Any = error.instance
        schema: Any = error.schema
        rule = error.validator
        if rule == "additionalProperties":
            for name in sorted(set(body) - set(self.properties)):
                yield name, self.unknown_field_message(name)
            return
        if rule == "required":
            missing = [n for n in schema.get("required", ()) if n not in value]
            wanted = ", ".join(f"'{n}' ({self._allowed(n)})" for n in missing)
            yield _join(path, missing[0]), f"{self.id} requires {wanted}"
            return
        messages = {
            "maximum": lambda: f"{_num(value)} is above the maximum {_num(schema['maximum'])}",
            "minimum": lambda: f"{_num(value)} is below the minimum {_num(schema['minimum'])}",
            "enum": lambda: (
                f"{value!r} is not one of "
                + ", ".join(repr(v) for v in schema["enum"] if v is not None)
            ),
            "type": lambda: f"{value!r} is not of type {_type_name(schema['type'])}",
            "minLength": lambda: (
                "is empty" if value == "" else f"is shorter than {schema['minLength']} characters"
            ),
            "maxLength": lambda: (
                f"is {len(value)} characters, above the maximum {schema['maxLength']}"
            ),
            "maxItems": lambda: f"has {len(value)} items, above the maximum {schema['maxItems']}",
            "minItems": lambda: f"has {len(value)} items, below the minimum {schema['minItems']}",
        }
        text = messages[rule]() if rule in messages else str(error.message)
        yield path, f"{text} for {self.id}"

    def unknown_field_message(self, name: str) -> str:
        if name in self.renamed_fields:
            return f"'{name}' was renamed to '{self.renamed_fields[name]}'"
        names = [p for p in self.properties if p != "prompt"]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{self.id} does not take '{name}' ({hint}it takes: {', '.join(names)})"

    def _allowed(self, name: str) -> str:
        param = self.param(name)
        return param.allowed() if param else "any"

    def estimate_units(self, body: Mapping[str, Any]) -> float | None:
        """Compute units the job will cost, or None when the price is not published."""
        return self._first_rule(self.price_rules, body)

    def estimate_usd(self, body: Mapping[str, Any]) -> float | None:
        """US dollars the job will cost, or None when no USD price is published."""
        return self._first_rule(self.usd_rules, body)

    def _first_rule(self, rules: tuple[PriceRule, ...], body: Mapping[str, Any]) -> float | None:
        for rule in rules:
            if all(self._holds(cond, body) for cond in rule.when):
                return rule.units
        return None

    def _holds(self, cond: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
        name = cond["param"]
        param = self.param(name)
        value = body.get(name, param.default if param else None)
        if "equals" in cond:
            return bool(value == cond["equals"])
        if "count" in cond:
            return len(value or ()) == int(cond["count"])
        return bool(value) is bool(cond["nonempty"])


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_name(kind: Any) -> str:
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else _join(text, str(part))
    return text


def _param(name: str, spec: Mapping[str, Any], required: bool) -> Param:
    kind = spec.get("type", "any")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return Param(
        name=name,
        type=str(kind),
        required=required,
        minimum=spec.get("minimum"),
        maximum=spec.get("maximum"),
        enum=tuple(spec["enum"]) if "enum" in spec else None,
        default=spec.get("default"),
        description=str(spec.get("description", "")),
    )


def _model(data: JsonDict) -> Model:
    price = data.get("price") or {}
    return Model(
        id=data["id"],
        name=data["name"],
        endpoint=data["endpoint"],
        description=data.get("description", ""),
        aliases=tuple(data.get("aliases", ())),
        schema=data["schema"],
        price_rules=tuple(
            PriceRule(when=tuple(r["when"]), units=float(r["units"]))
            for r in price.get("rules", ())
        ),
        average_seconds=price.get("average_seconds"),
        renamed_fields=dict(data.get("renamed_fields", {})),
        verified=bool(data.get("verified", True)),
        usd_rules=tuple(
            PriceRule(when=tuple(r["when"]), units=float(r["usd"]))
            for r in price.get("usd_rules", ())
        ),
        source=data.get("source", ""),
    )


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


class Catalog:
    """All models, looked up by id, alias or ``provider/model`` path."""

    __slots__ = ("_by_name", "models", "source")

    def __init__(self, models: list[Model], source: str = "") -> None:
        self.models = tuple(models)
        self.source = source
        self._by_name: dict[str, Model] = {}
        for model in self.models:
            for name in (model.id, *model.aliases, model.endpoint):
                self._by_name[_normalise(name)] = model

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def get(self, name: str) -> Model | None:
        return self._by_name.get(_normalise(name))

    def by_endpoint(self, endpoint: str) -> Model | None:
        return self._by_name.get(_normalise(endpoint))

    def resolve(self, name: str) -> Model:
        """The model called ``name``; a UsageError naming the closest models otherwise."""
        model = self.get(name)
        if model is None:
            raise UsageError(self.unknown_model_message(name))
        return model

    def unknown_model_message(self, name: str) -> str:
        close = difflib.get_close_matches(
            _normalise(str(name)), list(self._by_name), n=4, cutoff=0.5
        )
        suggestions = list(dict.fromkeys(self._by_name[c].id for c in close))
        hint = f"; did you mean {' or '.join(suggestions)}?" if suggestions else ""
        return f"unknown model {name!r}{hint} (`krea-batch models` lists them all)"


# Pixel sizes, steps, seeds and counts: whole numbers, even where the spec says "number".
WHOLE = frozenset({"width", "height", "steps", "num_inference_steps", "seed", "num_images"})


def _whole_counts(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with the WHOLE properties typed ``integer`` (1024.5 pixels is no size)."""
    props = schema.get("properties", {})
    fixed = {
        name: {**spec, "type": "integer"}
        if name in WHOLE and spec.get("type") == "number"
        else spec
        for name, spec in props.items()
    }
    return {**schema, "properties": fixed}


@cache
def load_catalog() -> Catalog:
    """The catalog shipped with the package."""
    text = resources.files("runner").joinpath("catalog.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return Catalog([_model(m) for m in data["models"]], source=data.get("source", ""))
