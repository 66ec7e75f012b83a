"""What a manifest will do before it does it: jobs per model, estimated cost, first specs."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from runner.jobspec import JobSpec
from runner.manifest.expand import expand
from runner.manifest.model import Manifest
from runner.manifest.sizes import size_text


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


@dataclass(frozen=True)
class Plan:
    """The full expansion of a manifest, summarised."""

    file: str
    jobs: int
    duplicates: int
    models: tuple[ModelPlan, ...]
    first: tuple[JobSpec, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    sizes: tuple[SizeFor, ...] = ()  # what each model is sent for each size written

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
        return {
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


def spec_json(spec: JobSpec) -> dict[str, Any]:
    """A job spec as plan --show prints it: its description and estimated price."""
    return {**spec.describe(), "estimated_usd": spec.usd, "estimated_compute_units": spec.units}


def make_plan(manifest: Manifest, show: int = 0) -> Plan:
    """Expand the whole manifest once (lazily, so memory stays flat) and count."""
    jobs: Counter[str] = Counter()
    units: dict[str, float] = defaultdict(float)
    usd: dict[str, float] = defaultdict(float)
    unpriced: Counter[str] = Counter()
    first: list[JobSpec] = []
    expansion = expand(manifest)
    for spec in expansion:
        jobs[spec.model] += 1
        if spec.usd is not None:
            usd[spec.model] += spec.usd
        elif spec.units is None:
            unpriced[spec.model] += 1
        else:
            units[spec.model] += spec.units
        if len(first) < show:
            first.append(spec)
    models = tuple(
        ModelPlan(model, count, units[model], unpriced[model], usd[model])
        for model, count in jobs.most_common()
    )
    return Plan(
        file=manifest.file,
        jobs=sum(jobs.values()),
        duplicates=expansion.duplicates,
        models=models,
        first=tuple(first),
        warnings=manifest.warnings,
        sizes=sizes_of(manifest),
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
