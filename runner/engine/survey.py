"""The one pass before anything is sent: the run's jobs counted in order, names checked, and
the jobs an earlier run left running, ambiguous or failed picked out."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.engine.ambiguity import is_ambiguous, risk_of, worst_cost
from runner.engine.budget import Budget, cannot_price
from runner.engine.options import EngineOptions
from runner.jobspec import JobSpec, in_shard
from runner.manifest import Manifest, expand
from runner.naming import (
    BUCKET_SIZE,
    DEFAULT_TEMPLATE,
    add_name,
    check_names,
    check_template,
    crowded_folders,
)
from runner.settings import RunSettings
from runner.state.events import Released
from runner.state.journal import Journal
from runner.state.ledger import KeyState
from runner.state.phase import Phase
from runner.state.run_events import Planned

log = logging.getLogger("runner.engine.engine")


@dataclass
class Survey:
    """What the pass found."""

    keys: list[str] = field(default_factory=list)  # every job's key, in manifest order
    resumed: list[JobSpec] = field(default_factory=list)  # running remotely: polled first
    released: list[JobSpec] = field(default_factory=list)  # ambiguous, to send again
    reopened: set[str] = field(default_factory=set)  # failed before, to run again
    planned: Planned = field(default_factory=lambda: Planned({}, (), 0, 0))


@dataclass(frozen=True)
class SurveyRules:
    """What the survey is asked to do beyond counting."""

    retry_failed: bool
    retry_ambiguous: bool
    name_stem: str  # the name template's stem (DEFAULT_TEMPLATE: unique by construction)
    name_template: str
    images: Path

    @classmethod
    def of(cls, settings: RunSettings, options: EngineOptions, images: Path) -> SurveyRules:
        template = settings.name_template
        stem = check_template(template)
        return cls(options.retry_failed, options.retry_ambiguous, stem, template, images)


def specs_of(manifest: Manifest, options: EngineOptions) -> Iterator[JobSpec]:
    """The run's job specs in manifest order: its shard's, up to its --limit."""
    specs: Iterator[JobSpec] = iter(expand(manifest))
    if options.shard is not None:
        shard = options.shard
        specs = (spec for spec in specs if in_shard(spec.key, shard))
    return itertools.islice(specs, options.limit)


def survey(
    specs: Iterable[JobSpec], states: Mapping[str, KeyState], rules: SurveyRules, budget: Budget
) -> Survey:
    """Count and sort the run's jobs (module docstring); raises UsageError when two jobs
    would write one file."""
    found = Survey()
    names: dict[str, int] = {}
    by_model: dict[str, tuple[int, int]] = {}  # model → (finished before, jobs)
    unpriced: dict[str, int] = {}  # model → jobs to run that --budget cannot price
    failed_before = ambiguous_before = 0
    for spec in specs:
        found.keys.append(sys.intern(spec.key))  # one string with the ledger's
        done, jobs = by_model.get(spec.model, (0, 0))
        state = states.get(spec.key)
        phase = Phase.NEW if state is None else state.phase
        if state is not None and rules.retry_ambiguous and is_ambiguous(state):
            found.released.append(spec)
        elif phase is Phase.FAILED and rules.retry_failed:
            found.reopened.add(spec.key)
        elif phase.finished:  # counted as skipped at once, not as the producer reaches it
            done += 1
            failed_before += phase is Phase.FAILED
            ambiguous_before += state is not None and is_ambiguous(state)
        elif phase is not Phase.NEW:
            found.resumed.append(spec)
        by_model[spec.model] = (done, jobs + 1)
        if not (phase.finished and spec.key not in found.reopened) and not budget.covers(spec):
            unpriced[spec.model] = unpriced.get(spec.model, 0) + 1
        if rules.name_stem != DEFAULT_TEMPLATE:
            add_name(names, rules.name_stem, rules.name_template, spec)
    if names:
        _check_names(names, rules)
    found.planned = Planned(by_model, (), failed_before, ambiguous_before)
    if unpriced:  # said once, before anything is sent
        log.warning("%s", cannot_price(unpriced))
    return found


async def release_ambiguous(journal: Journal, released: Sequence[JobSpec]) -> None:
    """--retry-ambiguous: say what sending them again may cost, then free them to go."""
    if not released:
        return
    states = journal.ledger.states
    risk = risk_of(states, (spec.key for spec in released))
    cost = worst_cost(risk, ((spec.usd, spec.units) for spec in released))
    log.warning("--retry-ambiguous: %s", risk.sentence(cost))
    await journal.record_many(Released(spec.key, states[spec.key].attempts) for spec in released)


def _check_names(names: dict[str, int], rules: SurveyRules) -> None:
    check_names(names, rules.name_template, rules.images)
    for crowded, files in crowded_folders(names).items():
        log.warning(
            "images/%s would hold %d files; the Hugging Face Hub takes fewer than "
            "%d a folder: add {bucket}/ to the name template",
            crowded,
            files,
            BUCKET_SIZE,
        )
