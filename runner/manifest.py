"""The manifest: YAML in, validated entries out, expanded lazily into job specs.

Loading (``load_manifest``) reads the YAML and any prompts files, checks the structure against
``MANIFEST_SCHEMA`` and every entry's parameters against the catalog, and reports the first
problem as a ManifestError with file, path and line. Expansion (``expand``) is pure and lazy:
specs come out one at a time in a fixed order, so memory does not grow with the matrix.
"""

from __future__ import annotations

import csv
import difflib
import io
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from runner import jsontext, located_yaml
from runner.assets import AssetError, with_local_files
from runner.catalog import Catalog, Model, load_catalog
from runner.errors import ManifestError
from runner.files import UnusableFile, open_regular, read_regular
from runner.jobspec import JobSpec, derive_seed, job_key
from runner.located_yaml import join
from runner.settings import SETTING_NAMES, RunSettings, parse_settings

MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; its prompts belong in prompts files
MAX_PROMPTS_BYTES = 1 << 30  # a million prompts of a few hundred characters fit easily

_SEED = {
    "type": "integer",
    "minimum": 0,
    "maximum": 2**32 - 1,
    "x-allowed": "a whole number 0–4294967295",
}
_SEED_OR_AUTO = {"anyOf": [_SEED, {"const": "auto"}], "x-allowed": "a whole number or 'auto'"}
_SCALAR = {"type": ["string", "number", "boolean"], "x-allowed": "a text, number or true/false"}
_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_SIZE = {
    "type": "string",
    "pattern": r"^\s*(\d+\s*[xX×]\s*\d+|\d+(\.\d+)?\s*:\s*\d+(\.\d+)?)\s*$",
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
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt template and where it was written (for error messages); a row of a prompts
    file may bring its own parameters and seed (``params_from``)."""

    text: str
    where: str
    params: Mapping[str, Any] = field(default_factory=dict)  # as the file gives them
    seed: int | None = None
    typed: bool = True  # False: CSV text, converted to each model's parameter types


@dataclass(frozen=True, slots=True)
class Variant:
    """One model of an entry with its merged, validated parameters (without prompt and seed)."""

    model: Model
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of ``jobs:``, validated; expands into the product of its axes."""

    index: int
    name: str | None
    prompts: tuple[Prompt, ...]
    vars: tuple[tuple[str, tuple[Any, ...]], ...]
    variants: tuple[Variant, ...]  # models × sizes
    seeds: tuple[int | str | None, ...]  # an int, "auto", or None (server's choice)
    count: int

    @property
    def size(self) -> int:
        var_combos = math.prod(len(values) for _, values in self.vars)
        seeded = sum(1 for prompt in self.prompts if prompt.seed is not None)
        rows = seeded + (len(self.prompts) - seeded) * len(self.seeds)
        return rows * var_combos * len(self.variants) * self.count


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated manifest."""

    file: str
    entries: tuple[Entry, ...]
    settings: RunSettings
    raw_settings: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    prices: Mapping[str, float] = field(default_factory=dict)  # model id → USD per image
    assets: Mapping[str, Path] = field(default_factory=dict)  # local images: sha256 → path

    @property
    def total_jobs(self) -> int:
        """Jobs the manifest expands to, duplicates included."""
        return sum(entry.size for entry in self.entries)


class _Context:
    """The file being loaded, its line marks, and how to raise errors located in it."""

    def __init__(
        self, file: str, marks: located_yaml.Marks, catalog: Catalog, base_dir: Path = Path()
    ) -> None:
        self.file = file
        self.base_dir = base_dir
        self.assets: dict[str, Path] = {}  # local reference images named: sha256 → path
        self.marks = marks
        self.catalog = catalog
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> ManifestError:
        mark = located_yaml.locate(self.marks, path)
        line, column = mark if mark else (None, None)
        return ManifestError(message, file=self.file, path=path, line=line, column=column)


def load_manifest(
    path: str | Path,
    *,
    catalog: Catalog | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Manifest:
    """Read and validate a manifest file; ``overrides`` are run settings from the CLI."""
    file = str(path)
    try:
        text = read_regular(Path(path), MAX_MANIFEST_BYTES).decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise ManifestError("no such file", file=file) from exc
    except UnusableFile as exc:
        raise ManifestError(f"cannot read it: it {exc.strerror}", file=file) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read it: {exc}", file=file) from exc
    return parse_manifest(
        text, file=file, base_dir=Path(path).parent, catalog=catalog, overrides=overrides
    )


def parse_manifest(
    text: str,
    *,
    file: str = "<manifest>",
    base_dir: Path = Path(),
    catalog: Catalog | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Manifest:
    """Validate manifest text (see ``load_manifest``)."""
    data, marks = located_yaml.load(text, file)
    ctx = _Context(file, marks, catalog or load_catalog(), base_dir)
    if not isinstance(data, dict):
        raise ctx.error("", "a manifest is a mapping with `version: 1` and `jobs:`")
    _check_structure(ctx, data)
    raw_settings = dict(data.get("run") or {})
    settings = _settings(ctx, raw_settings, overrides or {})
    defaults = data.get("defaults") or {}
    entries = tuple(_entry(ctx, i, raw, defaults, base_dir) for i, raw in enumerate(data["jobs"]))
    prices = _prices(ctx, data.get("prices") or {})
    manifest = Manifest(
        file, entries, settings, raw_settings, tuple(ctx.warnings), prices, dict(ctx.assets)
    )
    if manifest.total_jobs > settings.max_jobs:
        biggest = max(entries, key=lambda e: e.size)
        raise ctx.error(
            f"jobs[{biggest.index}]" if len(entries) > 1 else "jobs",
            f"the manifest expands to {manifest.total_jobs:,} jobs "
            f"(jobs[{biggest.index}] alone to {biggest.size:,}), above the cap of "
            f"{settings.max_jobs:,}; raise run.max_jobs or --max-jobs if you mean it",
        )
    return manifest


def _prices(ctx: _Context, raw: Mapping[str, Any]) -> dict[str, float]:
    """``prices:``: USD per image for models Krea publishes no USD price for."""
    prices = {}
    for name, usd in raw.items():
        where = join("prices", name)
        model = ctx.catalog.get(name)
        if model is None:
            raise ctx.error(where, ctx.catalog.unknown_model_message(name))
        if model.usd_rules:
            published = sorted({rule.units for rule in model.usd_rules})
            raise ctx.error(
                where,
                f"{model.id} has a published price (${published[0]:g}"
                + (f"–{published[-1]:g}" if len(published) > 1 else "")
                + " per image); prices: is for models without one",
            )
        prices[model.id] = float(usd)
    return prices


def _check_structure(ctx: _Context, data: dict[str, Any]) -> None:
    errors = list(_VALIDATOR.iter_errors(data))
    if not errors:
        return
    error = best_match(errors, key=lambda e: -len(e.path))
    path = _path_of(error.absolute_path)
    raise ctx.error(*_describe(error, path))


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


def _settings(ctx: _Context, raw: dict[str, Any], overrides: Mapping[str, Any]) -> RunSettings:
    settings = RunSettings()
    for source, values in (("run", raw), ("", overrides)):
        for name, value in values.items():
            if value is None:
                continue
            try:
                parsed = parse_settings({name: value})
            except ValueError as exc:
                where = join(source, name) if source else f"--{name.replace('_', '-')}"
                raise ctx.error(where, str(exc)) from exc
            settings = settings.merged(parsed)
    return settings


def _one_of(ctx: _Context, raw: Mapping[str, Any], path: str, *keys: str) -> str | None:
    present = [k for k in keys if k in raw]
    if len(present) > 1:
        raise ctx.error(join(path, present[1]), f"use only one of {', '.join(keys)}")
    return present[0] if present else None


def _entry(
    ctx: _Context, index: int, raw: dict[str, Any], defaults: dict[str, Any], base_dir: Path
) -> Entry:
    path = f"jobs[{index}]"
    prompts = _prompts(ctx, raw, path, base_dir)
    var_values = _vars(ctx, raw, path)
    names = set(var_values)
    name = raw.get("name")
    used = set(_PLACEHOLDER.findall(name or ""))
    for prompt in prompts:
        found = _PLACEHOLDER.findall(prompt.text)
        used.update(found)
        missing = [p for p in found if p not in names]
        if missing:
            raise ctx.error(
                prompt.where, f"placeholder {{{missing[0]}}} has no value: add it under {path}.vars"
            )
        if not prompt.text.strip():
            raise ctx.error(prompt.where, "the prompt is empty")
    for missing in _PLACEHOLDER.findall(name or ""):
        if missing not in names:
            raise ctx.error(join(path, "name"), f"placeholder {{{missing}}} has no value")
    for where, text in _param_templates(raw, path):
        found = _PLACEHOLDER.findall(text)
        used.update(found)
        for missing in found:
            if missing not in names:
                raise ctx.error(where, f"placeholder {{{missing}}} has no value: add it to vars")
    unused = sorted(names - used)
    if unused:
        raise ctx.error(
            join(join(path, "vars"), unused[0]),
            "is not used as a {placeholder} in the prompt or name",
        )
    models = _models(ctx, raw, defaults, path)
    seeds = _seeds(ctx, raw, defaults, path)
    sizes, sizes_path = _pick(raw, defaults, path, "sizes")
    variants = tuple(
        _variant(ctx, model, size, sizes_path, i, raw, defaults, path, var_values)
        for model in models
        for i, size in enumerate(sizes or [None])
    )
    if "params_from" in raw:
        prompts = tuple(_row_files(ctx, p, models[0], join(path, "params_from")) for p in prompts)
        _check_rows(ctx, prompts, variants, join(path, "params_from"))
    for model in models:
        if not model.takes_seed and seeds != (None,):
            ctx.warnings.append(
                f"{path}: {model.id} takes no seed; "
                + (
                    "'seed: auto' sends none"
                    if seeds == ("auto",)
                    else f"the {len(seeds)} seeds give {len(seeds)} unseeded replicas"
                )
            )
    count, _ = _pick(raw, defaults, path, "count")
    return Entry(
        index=index,
        name=name,
        prompts=prompts,
        vars=tuple(var_values.items()),
        variants=variants,
        seeds=seeds,
        count=count or 1,
    )


def _pick(
    raw: Mapping[str, Any], defaults: Mapping[str, Any], path: str, key: str
) -> tuple[Any, str]:
    if key in raw:
        return raw[key], join(path, key)
    return defaults.get(key), join("defaults", key)


def _prompts(
    ctx: _Context, raw: Mapping[str, Any], path: str, base_dir: Path
) -> tuple[Prompt, ...]:
    kind = _one_of(ctx, raw, path, "prompt", "prompts", "prompts_file")
    if kind is None:
        raise ctx.error(path, "needs one of prompt, prompts or prompts_file")
    for key in ("column", "params_from"):
        if key in raw and kind != "prompts_file":
            raise ctx.error(join(path, key), "only goes with prompts_file (.csv or .jsonl)")
    if kind == "prompt":
        return (Prompt(raw["prompt"], join(path, "prompt")),)
    if kind == "prompts":
        return tuple(Prompt(t, f"{path}.prompts[{i}]") for i, t in enumerate(raw["prompts"]))
    return _prompts_file(ctx, raw, path, base_dir)


def _prompts_file(
    ctx: _Context, raw: Mapping[str, Any], path: str, base_dir: Path
) -> tuple[Prompt, ...]:
    where = join(path, "prompts_file")
    file = base_dir / raw["prompts_file"]
    suffix = file.suffix.lower()
    if suffix not in (".txt", ".csv", ".jsonl"):
        raise ctx.error(where, f"{file}: use a .txt (one prompt a line), .csv or .jsonl file")
    column = raw.get("column", "prompt")
    columns = _Columns(raw.get("params_from"), column, join(path, "params_from"))
    if columns.wanted and suffix == ".txt":
        raise ctx.error(
            columns.where, "takes a .csv or .jsonl prompts file (a .txt has no columns)"
        )
    try:
        raw_handle = open_regular(file, max_bytes=MAX_PROMPTS_BYTES)
        # utf-8-sig: a byte-order mark (Excel, Notepad) is not part of the first prompt.
        with io.TextIOWrapper(raw_handle, encoding="utf-8-sig", newline="") as handle:
            if suffix == ".txt":
                prompts = [
                    Prompt(line.strip(), f"{file}:{n}")
                    for n, line in enumerate(handle, 1)
                    if line.strip() and not line.lstrip().startswith("#")
                ]
            elif suffix == ".csv":
                prompts = _csv_prompts(ctx, handle, file, columns, where)
            else:
                prompts = _jsonl_prompts(ctx, handle, file, columns, where)
    except FileNotFoundError as exc:
        raise ctx.error(where, f"prompts file {file} does not exist") from exc
    except UnusableFile as exc:
        raise ctx.error(where, f"cannot read {file}: it {exc.strerror}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ctx.error(where, f"cannot read {file}: {exc}") from exc
    if not prompts:
        raise ctx.error(where, f"{file} holds no prompts")
    return tuple(prompts)


@dataclass(frozen=True, slots=True)
class _Columns:
    """Which columns of a prompts file become what: the prompt, and (``params_from``) the
    row's parameters and seed."""

    params_from: str | Mapping[str, str] | None
    prompt: str
    where: str

    @property
    def wanted(self) -> bool:
        return bool(self.params_from)

    def check(self, ctx: _Context, file: Path, names: Sequence[str]) -> None:
        if isinstance(self.params_from, Mapping):
            for param, column in self.params_from.items():
                if column not in names:
                    raise ctx.error(
                        join(self.where, param),
                        f"{file} has no column {column!r} (columns: {', '.join(names)})",
                    )

    def row(self, text: str, where: str, record: Mapping[str, Any], typed: bool) -> Prompt:
        """The prompt of one row, with its parameters; empty CSV cells are left out."""
        if not self.params_from:
            return Prompt(text, where)
        if self.params_from == "all":
            pairs = [(name, name) for name in record if name != self.prompt]
        else:
            pairs = list(self.params_from.items())  # type: ignore[union-attr]
        params = {
            param: record[column]
            for param, column in pairs
            if record.get(column) is not None and record.get(column) != ""
        }
        seed = params.pop("seed", None)
        try:
            seed = None if seed is None else int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: seed {seed!r} is not a whole number") from None
        return Prompt(text, where, params, seed, typed)


def _csv_prompts(
    ctx: _Context, handle: Any, file: Path, columns: _Columns, where: str
) -> list[Prompt]:
    reader = csv.DictReader(handle)
    try:
        names = reader.fieldnames or []
    except csv.Error as exc:  # a NUL byte, a field past the csv module's size limit
        raise ctx.error(where, f"{file}:{reader.line_num}: not a CSV file ({exc})") from None
    if columns.prompt not in names:
        raise ctx.error(
            where,
            f"{file} has no column {columns.prompt!r} (columns: {', '.join(names)}); set `column:`",
        )
    columns.check(ctx, file, names)
    try:
        return [
            columns.row(row[columns.prompt] or "", f"{file}:{reader.line_num}", row, typed=False)
            for row in reader
        ]
    except csv.Error as exc:
        raise ctx.error(where, f"{file}:{reader.line_num}: not a CSV file ({exc})") from None
    except ValueError as exc:
        raise ctx.error(columns.where, str(exc)) from None


def _jsonl_prompts(
    ctx: _Context, handle: Any, file: Path, columns: _Columns, where: str
) -> list[Prompt]:
    prompts = []
    column = columns.prompt
    for n, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            record = jsontext.loads(line)
        except json.JSONDecodeError as exc:
            raise ctx.error(where, f"{file}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise ctx.error(where, f"{file}:{n}: expected an object with a text field {column!r}")
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
            raise ctx.error(
                where, f"{file}:{n}: text that cannot be written as UTF-8 ({bad}: a lone surrogate)"
            ) from None
        try:
            prompts.append(columns.row(record[column], f"{file}:{n}", record, typed=True))
        except ValueError as exc:
            raise ctx.error(columns.where, str(exc)) from None
    return prompts


def _vars(ctx: _Context, raw: Mapping[str, Any], path: str) -> dict[str, tuple[Any, ...]]:
    result = {}
    for name, values in (raw.get("vars") or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ctx.error(join(join(path, "vars"), name), "a variable name is letters, digits, _")
        result[name] = tuple(values) if isinstance(values, list) else (values,)
    return result


def _models(
    ctx: _Context, raw: Mapping[str, Any], defaults: Mapping[str, Any], path: str
) -> list[Model]:
    source, base = (raw, path) if ("model" in raw or "models" in raw) else (defaults, "defaults")
    key = _one_of(ctx, source, base, "model", "models")
    if key is None:
        raise ctx.error(path, "no model: set model or models here or under defaults")
    names = [source[key]] if key == "model" else source[key]
    models = []
    for i, name in enumerate(names):
        where = join(base, key) if key == "model" else f"{base}.models[{i}]"
        model = ctx.catalog.get(name)
        if model is None:
            raise ctx.error(where, ctx.catalog.unknown_model_message(name))
        if model in models:
            raise ctx.error(where, f"{model.id} is listed twice")
        models.append(model)
    return models


def _seeds(
    ctx: _Context, raw: Mapping[str, Any], defaults: Mapping[str, Any], path: str
) -> tuple[int | str | None, ...]:
    for source, base in ((raw, path), (defaults, "defaults")):
        key = _one_of(ctx, source, base, "seed", "seeds")
        if key == "seeds":
            return tuple(source["seeds"])
        if key == "seed":
            return (source["seed"],)
    return (None,)


def _model_params(
    ctx: _Context, block: Mapping[str, Any], model: Model, base: str
) -> list[tuple[dict[str, Any], str]]:
    found = []
    for name, params in (block.get("model_params") or {}).items():
        where = join(join(base, "model_params"), name)
        target = ctx.catalog.get(name)
        if target is None:
            raise ctx.error(where, ctx.catalog.unknown_model_message(name))
        if target is model:
            found.append((params, where))
    return found


def _variant(
    ctx: _Context,
    model: Model,
    size: str | None,
    sizes_path: str,
    size_index: int,
    raw: Mapping[str, Any],
    defaults: Mapping[str, Any],
    path: str,
    var_values: Mapping[str, tuple[Any, ...]],
) -> Variant:
    """Merge the parameters for one model of an entry and check them against the catalog,
    for every value of the vars its parameters use."""
    layers = [
        (defaults.get("params") or {}, "defaults.params"),
        *_model_params(ctx, defaults, model, "defaults"),
        (raw.get("params") or {}, join(path, "params")),
        *_model_params(ctx, raw, model, path),
    ]
    params: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer, where in layers:
        for name, value in layer.items():
            if name in ("prompt", "seed"):
                raise ctx.error(
                    join(where, name),
                    f"set the {name} with the entry's own keys "
                    "(prompt, prompts, prompts_file; seed, seeds), not in params",
                )
            name = _current_name(ctx, model, name, join(where, name))
            params[name] = _local_files(ctx, model, name, _normalise_number(value), where)
            origin[name] = join(where, name)
    if size is not None:
        for name, value in _size_params(size).items():
            params[name] = value
            origin[name] = f"{sizes_path}[{size_index}]"
    used = sorted(
        {v for t in params.values() if isinstance(t, str) for v in _PLACEHOLDER.findall(t)}
    )
    for combo in itertools.product(*(var_values[name] for name in used)):
        filled = _fill_params(params, dict(zip(used, combo, strict=True)))
        body = {"prompt": "x" * _prompt_min(model), **filled}
        for field_path, message in model.problems(body):
            top = field_path.split(".", 1)[0].split("[", 1)[0]
            if top == "prompt":
                continue
            if top in origin:
                raise ctx.error(origin[top] + field_path[len(top) :], message)
            if "params_from" not in raw:  # else rows may supply it: each row is checked whole
                raise ctx.error(path, message)
    return Variant(model, params)


def _local_files(ctx: _Context, model: Model, name: str, value: Any, where: str) -> Any:
    """The value with local reference images replaced by stand-ins (see runner.assets)."""
    try:
        schema = model.properties.get(name, {})
        return with_local_files(value, schema, ctx.base_dir, ctx.assets)
    except AssetError as exc:
        raise ctx.error(join(where, name), str(exc)) from None


def _param_templates(raw: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """(where, text) of each string parameter of an entry, where {placeholders} may be."""
    for name, value in (raw.get("params") or {}).items():
        if isinstance(value, str):
            yield join(join(path, "params"), name), value
    for model, params in (raw.get("model_params") or {}).items():
        for name, value in (params or {}).items():
            if isinstance(value, str):
                yield join(join(join(path, "model_params"), model), name), value


def _fill_params(params: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters with the {placeholders} of their text values filled from the vars."""
    if not values:
        return dict(params)
    filled = {}
    for name, value in params.items():
        if isinstance(value, str) and _PLACEHOLDER.search(value):
            text = _fill(value, values)
            whole = _PLACEHOLDER.fullmatch(value)  # "{n}" alone keeps the var's own type
            filled[name] = _normalise_number(values[whole.group(1)]) if whole else text
        else:
            filled[name] = value
    return filled


def _row_params(model: Model, prompt: Prompt) -> dict[str, Any]:
    """A row's parameters for ``model``: CSV text converted to the parameter's type."""
    if prompt.typed:
        return {name: _normalise_number(value) for name, value in prompt.params.items()}
    return {name: _typed(model, name, value) for name, value in prompt.params.items()}


def _typed(model: Model, name: str, text: str) -> Any:
    param = model.param(name)
    kind = param.type if param else "string"
    try:
        if "integer" in kind:
            return int(text)
        if "number" in kind:
            return _normalise_number(float(text))
    except ValueError:
        return text  # the schema check then says what is allowed
    if "boolean" in kind and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _row_files(ctx: _Context, prompt: Prompt, model: Model, where: str) -> Prompt:
    """A row whose local reference images are replaced by stand-ins."""
    if not prompt.params:
        return prompt
    params = {}
    for name, value in prompt.params.items():
        try:
            schema = model.properties.get(name, {})
            params[name] = with_local_files(value, schema, ctx.base_dir, ctx.assets)
        except AssetError as exc:
            raise ctx.error(where, f"{prompt.where}: {name}: {exc}") from None
    return replace(prompt, params=params)


def _check_rows(
    ctx: _Context, prompts: tuple[Prompt, ...], variants: tuple[Variant, ...], where: str
) -> None:
    """Each row's body with its own parameters, checked for every model of the entry (the
    row's line in the message). Placeholders of the entry's parameters were checked with
    every var value already: a stand-in value keeps them from failing here."""
    for prompt in prompts:
        for variant in variants:
            model = variant.model
            body = {"prompt": "x" * _prompt_min(model), **variant.params}
            body.update(_row_params(model, prompt))
            for field_path, message in model.problems(body):
                top = field_path.split(".", 1)[0].split("[", 1)[0]
                if top in prompt.params or top not in variant.params:
                    at = f"{field_path}: " if field_path else ""
                    raise ctx.error(where, f"{prompt.where}: {at}{message}")


def _current_name(ctx: _Context, model: Model, name: str, where: str) -> str:
    """The field's name today: a field Krea renamed is sent under its new name, with a hint."""
    new = model.renamed_fields.get(name)
    if new is None or name in model.properties or new not in model.properties:
        return name
    hint = f"{where}: '{name}' was renamed to '{new}' by Krea; sent as '{new}'"
    if hint not in ctx.warnings:
        ctx.warnings.append(hint)
    return new


def _prompt_min(model: Model) -> int:
    return int(model.properties.get("prompt", {}).get("minLength", 1))


def _size_params(size: str) -> dict[str, Any]:
    text = size.strip()
    if ":" in text:
        return {"aspect_ratio": re.sub(r"\s+", "", text)}
    width, height = re.split(r"\s*[xX×]\s*", text)
    return {"width": int(width), "height": int(height)}


def _normalise_number(value: Any) -> Any:
    """1024.0 and 1024 make the same request, so they must make the same key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _fill(template: str, values: Mapping[str, Any]) -> str:
    if not values:
        return template
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


class Expansion:
    """The job specs of a manifest, lazily, each key once; counts the duplicates it skipped."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.duplicates = 0

    def __iter__(self) -> Iterator[JobSpec]:
        seen: set[int] = set()
        position = 0
        for entry in self.manifest.entries:
            for spec in _expand_entry(self.manifest, entry):
                fingerprint = int(spec.key, 16)
                if fingerprint in seen:
                    self.duplicates += 1
                    continue
                seen.add(fingerprint)
                yield spec.at(position)
                position += 1


def expand(manifest: Manifest) -> Expansion:
    """The manifest's job specs in a deterministic order (see ``Expansion``)."""
    return Expansion(manifest)


def _expand_entry(manifest: Manifest, entry: Entry) -> Iterator[JobSpec]:
    var_names = [name for name, _ in entry.vars]
    combos = list(itertools.product(*(values for _, values in entry.vars)))
    for prompt in entry.prompts:
        for combo in combos:
            values = dict(zip(var_names, combo, strict=True))
            text = _fill(prompt.text, values)
            name = _fill(entry.name, values) if entry.name else None
            for variant in entry.variants:
                model = variant.model
                problem = _prompt_problem(model, text)
                if problem:
                    raise ManifestError(problem, file=manifest.file, path=prompt.where)
                seeds = entry.seeds if prompt.seed is None else (prompt.seed,)
                for seed_index, seed in enumerate(seeds):
                    for replica in range(entry.count):
                        spec = _spec(
                            entry, variant, prompt, text, name, values, seed, seed_index, replica
                        )
                        if spec.usd is None and model.id in manifest.prices:
                            spec = replace(spec, usd=manifest.prices[model.id])
                        yield spec


def _prompt_problem(model: Model, prompt: str) -> str | None:
    rules = model.properties.get("prompt", {})
    if not prompt.strip():
        return "the prompt is empty"
    if len(prompt) < rules.get("minLength", 0):
        minimum = rules["minLength"]
        return f"the prompt is shorter than {minimum} characters, the minimum for {model.id}"
    if len(prompt) > rules.get("maxLength", math.inf):
        return (
            f"the prompt is {len(prompt)} characters, above the maximum "
            f"{rules['maxLength']} for {model.id}"
        )
    return None


def _spec(
    entry: Entry,
    variant: Variant,
    row: Prompt,
    prompt: str,
    name: str | None,
    values: Mapping[str, Any],
    seed: int | str | None,
    seed_index: int,
    replica: int,
) -> JobSpec:
    model = variant.model
    body: dict[str, Any] = {"prompt": prompt, **_fill_params(variant.params, values)}
    body.update(_row_params(model, row))
    if model.takes_seed:
        replica_index = replica
        if seed == "auto":
            seed = derive_seed(job_key(model.endpoint, body, replica))
        if seed is not None:
            body["seed"] = seed
    else:
        # Without a seed parameter, each listed seed becomes one more unseeded replica.
        replica_index = seed_index * entry.count + replica
        seed = None
    return JobSpec(
        key=job_key(model.endpoint, body, replica_index),
        index=0,
        entry=entry.index,
        name=name,
        model=model.id,
        endpoint=model.endpoint,
        body=body,
        replica=replica_index,
        seed=seed if isinstance(seed, int) else None,
        vars=dict(values),
        units=model.estimate_units(body),
        usd=model.estimate_usd(body),
    )
