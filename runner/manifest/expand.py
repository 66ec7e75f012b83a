"""Expansion, pure and lazy: specs come out one at a time in a fixed order, so memory does not
grow with the matrix."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from runner.catalog import Model
from runner.errors import ManifestError
from runner.jobspec import JobSpec, derive_seed, job_key
from runner.manifest.model import Entry, Manifest, Prompt, Variant
from runner.manifest.params import fill, fill_params, row_params


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
            if prompt.columns:
                values = {**prompt.columns, **values}
            text = fill(prompt.text, values)
            if entry.prompt_template:
                text = fill(entry.prompt_template, {**values, "prompt": text})
            name = fill(entry.name, values) if entry.name else None
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
    body: dict[str, Any] = {"prompt": prompt, **fill_params(variant.params, values)}
    body.update(row_params(model, row))
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
