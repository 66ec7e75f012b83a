"""Parameters: vars, models, seeds and sizes, merged and checked against each model's schema,
row by row for prompts files that bring their own."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from runner.catalog import Model
from runner.integers import NotAWholeNumber, parse_int
from runner.manifest.assets import AssetError, with_local_files
from runner.manifest.located_yaml import join
from runner.manifest.model import Context, Prompt, Variant, one_of
from runner.manifest.sizes import SizeError, parse_size, size_params

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def entry_vars(ctx: Context, raw: Mapping[str, Any], path: str) -> dict[str, tuple[Any, ...]]:
    result = {}
    for name, values in (raw.get("vars") or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ctx.error(join(join(path, "vars"), name), "a variable name is letters, digits, _")
        result[name] = tuple(values) if isinstance(values, list) else (values,)
    return result


def entry_models(
    ctx: Context, raw: Mapping[str, Any], defaults: Mapping[str, Any], path: str
) -> list[Model]:
    source, base = (raw, path) if ("model" in raw or "models" in raw) else (defaults, "defaults")
    key = one_of(ctx, source, base, "model", "models")
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


def entry_seeds(
    ctx: Context, raw: Mapping[str, Any], defaults: Mapping[str, Any], path: str
) -> tuple[int | str | None, ...]:
    for source, base in ((raw, path), (defaults, "defaults")):
        key = one_of(ctx, source, base, "seed", "seeds")
        if key == "seeds":
            return tuple(source["seeds"])
        if key == "seed":
            return (source["seed"],)
    return (None,)


def _model_params(
    ctx: Context, block: Mapping[str, Any], model: Model, base: str
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


def make_variant(
    ctx: Context,
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
    sized: dict[str, Any] = {}
    if size is not None:
        where = f"{sizes_path}[{size_index}]"
        try:
            sized = size_params(model, parse_size(size), params)
        except SizeError as exc:
            raise ctx.error(where, f"{exc}: leave {model.id} out of this sizes list") from None
        for name, value in sized.items():
            params[name] = value
            origin[name] = where
    used = sorted(
        {v for t in params.values() if isinstance(t, str) for v in PLACEHOLDER.findall(t)}
    )
    for combo in itertools.product(*(var_values[name] for name in used)):
        filled = fill_params(params, dict(zip(used, combo, strict=True)))
        body = {"prompt": "x" * _prompt_min(model), **filled}
        for field_path, message in model.problems(body):
            top = field_path.split(".", 1)[0].split("[", 1)[0]
            if top == "prompt":
                continue
            if top in sized:  # pixels written for a model whose bounds they miss
                hint = "; as a ratio ('16:9') each model takes its own pixel count"
                ctx.report(ctx.error(origin[top], f"{top} {message}{hint}"))
            elif top in origin:
                ctx.report(ctx.error(origin[top] + field_path[len(top) :], message))
            elif "params_from" not in raw:  # else rows may supply it: each row is checked whole
                ctx.report(ctx.error(path, message))
    return Variant(model, params, size, tuple(sized.items()))


def _local_files(ctx: Context, model: Model, name: str, value: Any, where: str) -> Any:
    """The value with local reference images replaced by stand-ins (see runner.manifest.assets)."""
    try:
        schema = model.properties.get(name, {})
        return with_local_files(value, schema, ctx.base_dir, ctx.assets)
    except AssetError as exc:
        raise ctx.error(join(where, name), str(exc)) from None


def param_templates(raw: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """(where, text) of each string parameter of an entry, where {placeholders} may be."""
    for name, value in (raw.get("params") or {}).items():
        if isinstance(value, str):
            yield join(join(path, "params"), name), value
    for model, params in (raw.get("model_params") or {}).items():
        for name, value in (params or {}).items():
            if isinstance(value, str):
                yield join(join(join(path, "model_params"), model), name), value


def fill_params(params: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters with the {placeholders} of their text values filled from the vars."""
    if not values:
        return dict(params)
    filled = {}
    for name, value in params.items():
        if isinstance(value, str) and PLACEHOLDER.search(value):
            text = fill(value, values)
            whole = PLACEHOLDER.fullmatch(value)  # "{n}" alone keeps the var's own type
            filled[name] = _normalise_number(values[whole.group(1)]) if whole else text
        else:
            filled[name] = value
    return filled


def row_params(model: Model, prompt: Prompt) -> dict[str, Any]:
    """A row's parameters for ``model``: CSV text converted to the parameter's type."""
    if prompt.typed:
        return {name: _normalise_number(value) for name, value in prompt.params.items()}
    return {name: _typed(model, name, value) for name, value in prompt.params.items()}


_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # no nan, inf, ١


def _typed(model: Model, name: str, text: str) -> Any:
    param = model.param(name)
    kind = param.type if param else "string"
    try:
        if "integer" in kind:
            return parse_int(text, name, signed=True)
        if "number" in kind and _DECIMAL.fullmatch(text.strip()):
            number = float(text)
            return _normalise_number(number) if math.isfinite(number) else text
    except (NotAWholeNumber, ValueError):
        return text  # the schema check then says what is allowed
    if "boolean" in kind and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def row_files(ctx: Context, prompt: Prompt, model: Model, where: str) -> Prompt:
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


def check_rows(
    ctx: Context, prompts: tuple[Prompt, ...], variants: tuple[Variant, ...], where: str
) -> None:
    """Each row's body with its own parameters, checked for every model of the entry (the
    row's line in the message). Placeholders of the entry's parameters were checked with
    every var value already: a stand-in value keeps them from failing here."""
    for prompt in prompts:
        for variant in variants:
            model = variant.model
            body = {"prompt": "x" * _prompt_min(model), **variant.params}
            body.update(row_params(model, prompt))
            for field_path, message in model.problems(body):
                top = field_path.split(".", 1)[0].split("[", 1)[0]
                if top in prompt.params or top not in variant.params:
                    at = f"{field_path}: " if field_path else ""
                    raise ctx.error(where, f"{prompt.where}: {at}{message}")


def _current_name(ctx: Context, model: Model, name: str, where: str) -> str:
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


def _normalise_number(value: Any) -> Any:
    """1024.0 and 1024 make the same request, so they must make the same key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def fill(template: str, values: Mapping[str, Any]) -> str:
    if not values:
        return template
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
