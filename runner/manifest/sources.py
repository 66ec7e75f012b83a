"""Where prompts come from: written in the manifest, or a .txt, .csv or .jsonl prompts file
whose rows may bring their own parameters and seed (``params_from``)."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import jsontext
from runner.files import UnusableFile, open_regular
from runner.integers import NotAWholeNumber, parse_int
from runner.manifest.located_yaml import join
from runner.manifest.model import MAX_PROMPTS_BYTES, MAX_SEED, Context, Prompt, one_of
from runner.textfiles import TextError, text_lines


def entry_prompts(
    ctx: Context, raw: Mapping[str, Any], path: str, base_dir: Path
) -> tuple[Prompt, ...]:
    kind = one_of(ctx, raw, path, "prompt", "prompts", "prompts_file")
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
    ctx: Context, raw: Mapping[str, Any], path: str, base_dir: Path
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
        with open_regular(file, max_bytes=MAX_PROMPTS_BYTES) as handle:
            lines = text_lines(handle, str(file))
            if suffix == ".txt":
                name = str(file)
                rows: Iterator[Prompt] = (
                    Prompt(line.strip(), name, line=n)
                    for n, line in lines
                    if line.strip() and not line.lstrip().startswith("#")
                )
            elif suffix == ".csv":
                rows = _csv_prompts(ctx, (line for _, line in lines), file, columns, where)
            else:
                rows = _jsonl_prompts(ctx, lines, file, columns, where)
            # Each row is at least one job: rows past the job cap are never read (or held).
            prompts = list(itertools.islice(rows, ctx.max_rows + 1))
            if len(prompts) > ctx.max_rows:
                raise ctx.error(
                    where,
                    f"{file} holds more than {ctx.max_rows:,} prompts, above the cap on jobs; "
                    "raise run.max_jobs or --max-jobs if you mean it",
                )
    except FileNotFoundError as exc:
        raise ctx.error(where, f"prompts file {file} does not exist") from exc
    except UnusableFile as exc:
        raise ctx.error(where, f"cannot read {file}: it {exc.strerror}") from exc
    except OSError as exc:
        raise ctx.error(where, f"cannot read {file}: {exc}") from exc
    except TextError as exc:
        raise ctx.error(where, str(exc)) from exc
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

    def check(self, ctx: Context, file: Path, names: Sequence[str]) -> None:
        if isinstance(self.params_from, Mapping):
            for param, column in self.params_from.items():
                if column not in names:
                    raise ctx.error(
                        join(self.where, param),
                        f"{file} has no column {column!r} (columns: {', '.join(names)})",
                    )

    def row(
        self, text: str, source: str, line: int, record: Mapping[str, Any], typed: bool
    ) -> Prompt:
        """The prompt of one row, with its parameters (empty CSV cells are left out) and every
        other column as a var of that row."""
        columns = {
            name: value
            for name, value in record.items()
            if isinstance(name, str)
            and name != self.prompt
            and isinstance(value, str | int | float | bool)
        } or None
        if not self.params_from:
            return Prompt(text, source, columns=columns, line=line)
        if self.params_from == "all":
            pairs = [(name, name) for name in record if name != self.prompt]
        else:
            pairs = list(self.params_from.items())  # type: ignore[union-attr]
        params = {
            param: record[column]
            for param, column in pairs
            if record.get(column) is not None and record.get(column) != ""
        }
        seed = _row_seed(params.pop("seed", None), f"{source}:{line}: seed")
        return Prompt(text, source, params, seed, typed, columns, line)


def _row_seed(value: Any, where: str) -> int | None:
    """A row's seed: a whole number 0 to MAX_SEED, written as text (CSV) or a number (JSONL)."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise NotAWholeNumber(where, f"{value!r} is not a whole number")
        return parse_int(str(value), where, maximum=MAX_SEED)
    except NotAWholeNumber as exc:
        raise ValueError(str(exc)) from None


def _csv_prompts(
    ctx: Context, lines: Iterable[str], file: Path, columns: _Columns, where: str
) -> Iterator[Prompt]:
    reader = csv.DictReader(lines)
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
    name = str(file)
    try:
        for row in reader:
            text = row[columns.prompt] or ""
            yield columns.row(text, name, reader.line_num, row, typed=False)
    except csv.Error as exc:
        raise ctx.error(where, f"{file}:{reader.line_num}: not a CSV file ({exc})") from None
    except ValueError as exc:
        raise ctx.error(columns.where, str(exc)) from None


def _jsonl_prompts(
    ctx: Context, lines: Iterable[tuple[int, str]], file: Path, columns: _Columns, where: str
) -> Iterator[Prompt]:
    column, name = columns.prompt, str(file)
    for n, line in lines:
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
            prompt = columns.row(record[column], name, n, record, typed=True)
        except ValueError as exc:
            raise ctx.error(columns.where, str(exc)) from None
        yield prompt
