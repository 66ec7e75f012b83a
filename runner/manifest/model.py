"""What a loaded manifest is (prompts, variants, entries), and the loading context that
places each error at its file, path and line."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.catalog import Catalog, Model
from runner.errors import ManifestError, ManifestProblems
from runner.manifest import located_yaml
from runner.manifest.located_yaml import join
from runner.settings import RunSettings

MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; its prompts belong in prompts files


MAX_PROMPTS_BYTES = 1 << 30  # a million prompts of a few hundred characters fit easily
MAX_SEED = 2**32 - 1  # seeds are 32-bit unsigned everywhere Krea takes one
MAX_PROBLEMS = 20  # problems said at once: enough to fix a manifest in one go, not a flood


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt template and where it was written (for error messages); a row of a prompts
    file may bring its own parameters and seed (``params_from``)."""

    text: str
    source: str  # the manifest path, or the prompts file (one string shared by its rows)
    params: Mapping[str, Any] = field(default_factory=dict)  # as the file gives them
    seed: int | None = None
    typed: bool = True  # False: CSV text, converted to each model's parameter types
    columns: Mapping[str, Any] | None = None  # its row's other columns: vars
    line: int = 0  # its line in the prompts file (a million rows keep no string each)

    @property
    def where(self) -> str:
        """``jobs[0].prompt`` or ``prompts.csv:41``, for error messages."""
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True, slots=True)
class Variant:
    """One model of an entry with its merged, validated parameters (without prompt and seed)."""

    model: Model
    params: Mapping[str, Any]
    size: str | None = None  # as the manifest wrote it
    sized: tuple[tuple[str, Any], ...] = ()  # the parameters the size gave this model


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
    prompt_template: str | None = None  # "{prompt}, in {style} style": the prompt sent

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
    def var_names(self) -> tuple[str, ...]:
        """Every var a job of the manifest may carry: its entries' and its prompt rows'."""
        names = {name for entry in self.entries for name, _ in entry.vars}
        for entry in self.entries:
            for prompt in entry.prompts:
                if prompt.columns:
                    names.update(prompt.columns)
        return tuple(sorted(names))

    @property
    def total_jobs(self) -> int:
        """Jobs the manifest expands to, duplicates included."""
        return sum(entry.size for entry in self.entries)


class Context:
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
        self.problems: list[ManifestError] = []  # found so far, each said once
        self.max_rows = RunSettings().max_jobs  # rows a prompts file may hold (run.max_jobs)

    def error(self, path: str, message: str) -> ManifestError:
        mark = located_yaml.locate(self.marks, path)
        line, column = mark if mark else (None, None)
        return ManifestError(message, file=self.file, path=path, line=line, column=column)

    def report(self, error: ManifestError) -> None:
        """Note a problem and go on looking for others; at MAX_PROBLEMS, stop."""
        if any(str(error) == str(known) for known in self.problems):
            return
        self.problems.append(error)
        if len(self.problems) >= MAX_PROBLEMS:
            raise ManifestProblems(self.problems, bounded=True)

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """Run a check that stops at its first problem; note the problem, go on after it."""
        try:
            yield
        except ManifestProblems:
            raise
        except ManifestError as exc:
            self.report(exc)

    def raise_problems(self) -> None:
        """One problem as itself, several together."""
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            self.problems.sort(key=lambda p: (p.line is None, p.line or 0, p.column or 0))
            raise ManifestProblems(self.problems)


def one_of(ctx: Context, raw: Mapping[str, Any], path: str, *keys: str) -> str | None:
    present = [k for k in keys if k in raw]
    if len(present) > 1:
        raise ctx.error(join(path, present[1]), f"use only one of {', '.join(keys)}")
    return present[0] if present else None
