"""Loading: the YAML and its prompts files in, validated entries out; the first problem is a
ManifestError with file, path and line."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.catalog import Catalog, Model, load_catalog
from runner.errors import ManifestError
from runner.files import UnusableFile
from runner.manifest import located_yaml
from runner.manifest.located_yaml import join
from runner.manifest.model import MAX_MANIFEST_BYTES, Context, Entry, Manifest, Prompt
from runner.manifest.params import (
    PLACEHOLDER,
    check_rows,
    entry_models,
    entry_seeds,
    entry_vars,
    make_variant,
    param_templates,
    row_files,
)
from runner.manifest.schema import check_structure
from runner.manifest.sources import entry_prompts
from runner.naming import DEFAULT_TEMPLATE
from runner.settings import RunSettings, parse_settings
from runner.textfiles import TextError, read_text
from runner.wording import counted


def load_manifest(
    path: str | Path,
    *,
    catalog: Catalog | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Manifest:
    """Read and validate a manifest file; ``overrides`` are run settings from the CLI."""
    file = str(path)
    try:
        text = read_text(Path(path), MAX_MANIFEST_BYTES)
    except FileNotFoundError as exc:
        raise ManifestError("no such file", file=file) from exc
    except UnusableFile as exc:
        raise ManifestError(f"cannot read it: it {exc.strerror}", file=file) from exc
    except OSError as exc:
        raise ManifestError(f"cannot read it: {exc}", file=file) from exc
    except TextError as exc:
        raise ManifestError(exc.reason, file=file, line=exc.line) from exc
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
    ctx = Context(file, marks, catalog or load_catalog(), base_dir)
    if not isinstance(data, dict):
        raise ctx.error("", "a manifest is a mapping with `version: 1` and `jobs:`")
    check_structure(ctx, data)
    raw_settings = dict(data.get("run") or {})
    settings = _settings(ctx, raw_settings, overrides or {})
    ctx.max_rows = settings.max_jobs
    if settings.name_template != DEFAULT_TEMPLATE and settings.format != "files":
        ctx.warnings.append(
            f"the name template names the files of --format files only: --format "
            f"{settings.format} names each image in its shard by its key"
        )
    defaults = data.get("defaults") or {}
    found = [_entry(ctx, i, raw, defaults, base_dir) for i, raw in enumerate(data["jobs"])]
    prices = _prices(ctx, data.get("prices") or {})
    ctx.raise_problems()
    entries = tuple(entry for entry in found if entry is not None)
    manifest = Manifest(
        file, entries, settings, raw_settings, tuple(ctx.warnings), prices, dict(ctx.assets)
    )
    if manifest.total_jobs > settings.max_jobs:
        biggest = max(entries, key=lambda e: e.size)
        raise ctx.error(
            f"jobs[{biggest.index}]" if len(entries) > 1 else "jobs",
            f"the manifest expands to {counted(manifest.total_jobs, 'job')} "
            f"(jobs[{biggest.index}] alone to {biggest.size:,}), above the cap of "
            f"{settings.max_jobs:,}; raise run.max_jobs or --max-jobs if you mean it",
        )
    return manifest


def _prices(ctx: Context, raw: Mapping[str, Any]) -> dict[str, float]:
    """``prices:``: USD per image for models Krea publishes no USD price for."""
    prices = {}
    for name, usd in raw.items():
        where = join("prices", name)
        model = ctx.catalog.get(name)
        if model is None:
            ctx.report(ctx.error(where, ctx.catalog.unknown_model_message(name)))
        elif model.usd_rules:
            published = sorted({rule.units for rule in model.usd_rules})
            ctx.report(
                ctx.error(
                    where,
                    f"{model.id} has a published price (${published[0]:g}"
                    + (f"–{published[-1]:g}" if len(published) > 1 else "")
                    + " per image); prices: is for models without one",
                )
            )
        else:
            prices[model.id] = float(usd)
    return prices


def _settings(ctx: Context, raw: dict[str, Any], overrides: Mapping[str, Any]) -> RunSettings:
    settings = RunSettings()
    for source, values in (("run", raw), ("", overrides)):
        for name, value in values.items():
            if value is None:
                continue
            try:
                parsed = parse_settings({name: value})
            except ValueError as exc:
                if source:
                    ctx.report(ctx.error(join(source, name), str(exc)))
                else:  # a flag's value: no line of the manifest is to blame
                    ctx.report(ManifestError(str(exc), path=f"--{name.replace('_', '-')}"))
                continue
            settings = settings.merged(parsed)
    return settings


def _entry(
    ctx: Context, index: int, raw: dict[str, Any], defaults: dict[str, Any], base_dir: Path
) -> Entry | None:
    """One entry, checked; None when it has problems (each noted in ``ctx``)."""
    path = f"jobs[{index}]"
    before = len(ctx.problems)
    prompts: tuple[Prompt, ...] | None = None
    with ctx.collecting():
        prompts = entry_prompts(ctx, raw, path, base_dir)
    var_values: dict[str, tuple[Any, ...]] | None = None
    with ctx.collecting():
        var_values = entry_vars(ctx, raw, path)
    if prompts is None or var_values is None:  # the rest would be said wrongly
        return None
    _check_placeholders(ctx, raw, path, prompts, set(var_values))
    models: list[Model] = []
    seeds: tuple[int | str | None, ...] = (None,)
    with ctx.collecting():
        models = entry_models(ctx, raw, defaults, path)
    with ctx.collecting():
        seeds = entry_seeds(ctx, raw, defaults, path)
    sizes, sizes_path = _pick(raw, defaults, path, "sizes")
    variants = []
    for model in models:
        for i, size in enumerate(sizes or [None]):
            with ctx.collecting():
                variants.append(
                    make_variant(ctx, model, size, sizes_path, i, raw, defaults, path, var_values)
                )
    if len(ctx.problems) > before:
        return None
    if "params_from" in raw:
        with ctx.collecting():
            prompts = tuple(
                row_files(ctx, p, models[0], join(path, "params_from")) for p in prompts
            )
            check_rows(ctx, prompts, tuple(variants), join(path, "params_from"))
        if len(ctx.problems) > before:
            return None
    _warn_unseeded(ctx, path, models, seeds)
    count, _ = _pick(raw, defaults, path, "count")
    return Entry(
        index=index,
        name=raw.get("name"),
        prompts=prompts,
        vars=tuple(var_values.items()),
        variants=tuple(variants),
        seeds=seeds,
        count=count or 1,
        prompt_template=raw.get("prompt_template"),
    )


def _check_placeholders(
    ctx: Context, raw: Mapping[str, Any], path: str, prompts: tuple[Prompt, ...], names: set[str]
) -> None:
    """Each {placeholder} has a value (a var, or a column of each row) and each var is used;
    every problem noted, with the var meant where one is close."""
    name, template = raw.get("name"), raw.get("prompt_template")
    used = set(PLACEHOLDER.findall(name or "")) | set(PLACEHOLDER.findall(template or ""))
    # Placeholders of name and prompt_template that no var fills: each row's columns must.
    from_columns = [
        (field_name, found)
        for field_name, text in (("name", name), ("prompt_template", template))
        for found in PLACEHOLDER.findall(text or "")
        if found not in names and not (found == "prompt" and field_name == "prompt_template")
    ]
    for prompt in prompts:
        text = prompt.text
        if "{" not in text and not from_columns and not prompt.columns and text.strip():
            continue  # no placeholder, no column, not empty: nothing to check (most rows)
        used.update(PLACEHOLDER.findall(text))
        with ctx.collecting():
            _check_prompt(ctx, path, prompt, names, from_columns)
    for where, text in param_templates(raw, path):
        found = PLACEHOLDER.findall(text)
        used.update(found)
        for missing in found:
            if missing not in names:
                hint = _close_var(missing, names)
                ctx.report(
                    ctx.error(
                        where, f"placeholder {{{missing}}} has no value: add it to vars{hint}"
                    )
                )
    for unused in sorted(names - used):
        ctx.report(
            ctx.error(
                join(join(path, "vars"), unused),
                "is not used as a {placeholder} in the prompt or name",
            )
        )


def _check_prompt(
    ctx: Context,
    path: str,
    prompt: Prompt,
    names: set[str],
    from_columns: list[tuple[str, str]],
) -> None:
    """A ManifestError for the first placeholder of one prompt that has no value."""
    if prompt.columns and not names.isdisjoint(prompt.columns):
        raise ctx.error(
            join(join(path, "vars"), sorted(names & set(prompt.columns))[0]),
            f"is also a column of {prompt.where}: name the var or the column otherwise",
        )
    found = PLACEHOLDER.findall(prompt.text)
    columns = prompt.columns or {}
    missing = [p for p in found if p not in names and p not in columns]
    if missing:
        hint = _close_var(missing[0], names | set(columns))
        raise ctx.error(
            prompt.where,
            f"placeholder {{{missing[0]}}} has no value: add it under {path}.vars{hint}",
        )
    if not prompt.text.strip():
        raise ctx.error(prompt.where, "the prompt is empty")
    for field_name, wanted in from_columns:
        if wanted not in columns:
            raise ctx.error(
                join(path, field_name),
                f"placeholder {{{wanted}}} has no value for {prompt.where} "
                "(a var, or a column of the prompts file)",
            )


def _close_var(name: str, names: set[str]) -> str:
    """``; did you mean {style}?`` for a placeholder one typo away from a var."""
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f" (did you mean {{{close[0]}}}?)" if close else ""


def _warn_unseeded(
    ctx: Context, path: str, models: list[Model], seeds: tuple[int | str | None, ...]
) -> None:
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


def _pick(
    raw: Mapping[str, Any], defaults: Mapping[str, Any], path: str, key: str
) -> tuple[Any, str]:
    if key in raw:
        return raw[key], join(path, key)
    return defaults.get(key), join("defaults", key)
