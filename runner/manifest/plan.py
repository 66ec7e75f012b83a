"""What a manifest will do before it does it: jobs per model, estimated cost, first specs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from runner.jobspec import JobSpec, shard_of
from runner.manifest.expand import expand
from runner.manifest.model import Manifest
from runner.manifest.sizes import size_text
from runner.sharding import check_share


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """The jobs one model gets and their estimated cost: in USD where Krea publishes a USD
    price for them, else in compute units (never both for one job)."""

    model: str
    jobs: int
    units: float  # of the jobs without a USD price
    unpriced: int  # jobs whose price the catalog does not know
    usd: float = 0.0


@dataclass(frozen=True, slots=True)
class SizeFor:
    """A size as written, and what one model is sent for it."""

    size: str
    model: str
    sent: dict[str, Any]

    @property
    def text(self) -> str:
        return size_text(self.sent)


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """One shard of a split: its jobs and their estimated cost."""

    index: int  # counting from 1 (a scheduler's task index + 1)
    jobs: int
    usd: float
    units: float
    unpriced: int

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.index,
            "task": self.index - 1,
            "jobs": self.jobs,
            "estimated_usd": round(self.usd, 4),
            "estimated_compute_units": round(self.units, 2),
            "unpriced_jobs": self.unpriced,
        }


@dataclass(frozen=True)
class Plan:
    """The full expansion of a manifest, summarised (with a shard: that shard's part of it,
    and every shard of its split in ``shards``)."""

    file: str
    jobs: int
    duplicates: int
    models: tuple[ModelPlan, ...]
    first: tuple[JobSpec, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    sizes: tuple[SizeFor, ...] = ()  # what each model is sent for each size written
    shard: tuple[int, int] | None = None
    shards: tuple[ShardPlan, ...] = ()
    per_shard: dict[str, float] = field(default_factory=dict)  # each shard's part of the limits

    @property
    def units(self) -> float:
        return sum(m.units for m in self.models)

    @property
    def unpriced(self) -> int:
        return sum(m.unpriced for m in self.models)

    @property
    def usd(self) -> float:
        return sum(m.usd for m in self.models)

    def to_json(self) -> dict[str, Any]:
        data = {
            "file": self.file,
            "jobs": self.jobs,
            "duplicates_skipped": self.duplicates,
            "estimated_usd": round(self.usd, 4),
            "estimated_compute_units": round(self.units, 2),
            "unpriced_jobs": self.unpriced,
            "models": [
                {
                    "model": m.model,
                    "jobs": m.jobs,
                    "estimated_usd": round(m.usd, 4),
                    "estimated_compute_units": round(m.units, 2),
                    "unpriced_jobs": m.unpriced,
                }
                for m in self.models
            ],
            "warnings": list(self.warnings),
            "sizes": [{"size": s.size, "model": s.model, "sent": s.sent} for s in self.sizes],
            "first": [spec_json(s) for s in self.first],
        }
        if self.shard is not None:
            data["shard"] = list(self.shard)
            data["shards"] = [s.to_json() for s in self.shards]
            data["per_shard"] = self.per_shard
        return data


def spec_json(spec: JobSpec) -> dict[str, Any]:
    """A job spec as plan --show prints it: its description and estimated price."""
    return {**spec.describe(), "estimated_usd": spec.usd, "estimated_compute_units": spec.units}


@dataclass
class _Cost:
    jobs: int = 0
    usd: float = 0.0
    units: float = 0.0
    unpriced: int = 0

    def add(self, spec: JobSpec) -> None:
        self.jobs += 1
        if spec.usd is not None:
            self.usd += spec.usd
        elif spec.units is None:
            self.unpriced += 1
        else:
            self.units += spec.units


def make_plan(
    manifest: Manifest,
    show: int = 0,
    shard: tuple[int, int] | None = None,
    *,
    coordinated: bool = False,
) -> Plan:
    """Expand the whole manifest once (lazily, so memory stays flat) and count; with
    ``shard`` (I, N), count shard I's jobs and each shard's of the split (a split the
    account's concurrency cannot share is refused, as ``run`` refuses it, unless the shards
    are ``coordinated``: they then lease the account's limits instead of dividing them)."""
    settings = manifest.settings
    if shard is not None and not coordinated:
        check_share(shard[1], settings.concurrency)
    models: defaultdict[str, _Cost] = defaultdict(_Cost)
    split = [_Cost() for _ in range(shard[1] if shard else 0)]
    first: list[JobSpec] = []
    expansion = expand(manifest)
    for spec in expansion:
        if shard is not None:
            index = shard_of(spec.key, shard[1])
            split[index - 1].add(spec)
            if index != shard[0]:
                continue
        models[spec.model].add(spec)
        if len(first) < show:
            first.append(spec)
    ordered = sorted(models.items(), key=lambda item: -item[1].jobs)  # stable: first seen first
    per_shard: dict[str, float] = {}
    if shard is not None and not coordinated:
        per_shard = {
            "concurrency": max(1, settings.concurrency // shard[1]),
            "rate_limit_per_s": settings.rate_limit / shard[1],
        }
    return Plan(
        file=manifest.file,
        jobs=sum(c.jobs for c in models.values()),
        duplicates=expansion.duplicates,
        models=tuple(ModelPlan(m, c.jobs, c.units, c.unpriced, c.usd) for m, c in ordered),
        first=tuple(first),
        warnings=manifest.warnings,
        sizes=sizes_of(manifest),
        shard=shard,
        shards=tuple(
            ShardPlan(n, c.jobs, c.usd, c.units, c.unpriced) for n, c in enumerate(split, 1)
        ),
        per_shard=per_shard,
    )


def sizes_of(manifest: Manifest) -> tuple[SizeFor, ...]:
    """Each size written and what each model of its entries is sent for it, once each."""
    found: dict[tuple[str, str], SizeFor] = {}
    for entry in manifest.entries:
        for variant in entry.variants:
            if variant.size is not None:
                pair = (variant.size.strip(), variant.model.id)
                found.setdefault(pair, SizeFor(*pair, dict(variant.sized)))
    return tuple(found.values())
