"""A merge's inputs: each shard folder read (its identity, records, sealed shards, summary)
and the checks that they make one whole split of one manifest in one format."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import jsontext
from runner.errors import UsageError
from runner.outputs.identity import (
    FolderIdentity,
    ManifestId,
    api_identity,
    parse_identity,
)
from runner.outputs.layout import (
    IDENTITY_NAME,
    RESULTS_NAME,
    STATE_DIR,
    SUMMARY_NAME,
)
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.shard_ledger import SHARD_LEDGER, ShardLedger
from runner.outputs.trees import Tree, safe_relative
from runner.sharding import shard_words, task_of
from runner.state.records import ResultRecord, latest_records
from runner.wording import counted

log = logging.getLogger("runner.outputs.merge")

SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet"}


@dataclass
class MergeInput:
    tree: Tree
    identity: FolderIdentity | None
    summary: dict[str, Any]
    records: list[ResultRecord]
    format: str | None
    shard: tuple[int, int] | None
    shard_names: set[str]  # the shard files written there
    sealed: dict[str, int] = field(default_factory=dict)  # shard name → size when sealed


def read_input(name: str, scratch: Path) -> MergeInput:
    tree = Tree(name)
    try:
        if not tree.exists():
            raise UsageError(f"{name}: no such folder")
        holder = tree.lock_holder()
        if holder is not None:
            raise UsageError(
                f"{name} is in use by a live krea-batch run ({holder}): merge it once it ends"
            )
        if tree.local is not None:  # read where it is: never followed through a symlink
            results = tree.local / RESULTS_NAME
            has_results = results.exists() or results.is_symlink()
        else:
            scratch.mkdir(parents=True)
            results = scratch / RESULTS_NAME
            has_results = tree.fetch(RESULTS_NAME, results)
        identity = parse_identity(read_json(tree, IDENTITY_NAME))
        if not has_results and identity is None:
            raise UsageError(f"{name} holds no {RESULTS_NAME}: is it a krea-batch output folder?")
        summary = read_json(tree, SUMMARY_NAME)
        summary = summary if isinstance(summary, dict) else {}
        records = latest_records(results)
        shard_names = tree.names(SHARDS_DIR)
        format = format_of(tree, identity, records, shard_names)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({exc})") from exc
    for record in records:
        for entry in record.files:
            place = member_of(entry.path)
            path = place[0] if place else entry.path
            if not safe_relative(path) or (place and not safe_relative(place[1])):
                raise UsageError(
                    f"{name}/{RESULTS_NAME}: job {record.key} lists the file "
                    f"{entry.path[:80]!r}, outside its folder; not merged"
                )
    shard = identity.shard if identity is not None and identity.shard else summary_shard(summary)
    sealed = sealed_sizes(tree)
    return MergeInput(tree, identity, summary, records, format, shard, shard_names, sealed)


def sealed_sizes(tree: Tree) -> dict[str, int]:
    """The sizes its run sealed the folder's shards at (its ledger, in the folder or, for a
    URL, in the run's state folder on this machine; none known: empty)."""
    ledger = ShardLedger(tree.state / STATE_DIR / SHARD_LEDGER)
    return {name: sealed.size for name, sealed in ledger.sealed.items()}


def read_json(tree: Tree, relative: str) -> Any:
    data = tree.read_bytes(relative)
    if data is None:
        return None
    try:
        return jsontext.loads(data)
    except ValueError:
        return None


def format_of(
    tree: Tree, identity: FolderIdentity | None, records: list[ResultRecord], shards: set[str]
) -> str | None:
    """The folder's format: its identity's, its run's note, its records' paths, its shards."""
    if identity is not None:
        return identity.format
    note = tree.state / STATE_DIR / "format"
    try:
        return note.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        pass
    for record in records:
        for entry in record.files:
            place = member_of(entry.path)
            if place is None:
                if not entry.path.startswith("images/_unmatched/"):
                    return "files"
                continue
            return format_of_suffix(Path(place[0]).suffix)
    for name in shards:
        found = format_of_suffix(Path(name).suffix)
        if found is not None:
            return found
    return None


def format_of_suffix(suffix: str) -> str | None:
    return next((f for f, s in SUFFIXES.items() if s == suffix), None)


def summary_shard(summary: dict[str, Any]) -> tuple[int, int] | None:
    """The shard a summary.json records (``[I, N]`` or ``"I/N"``, at its top or in its
    settings), if it does."""
    settings = summary.get("settings")
    for value in (
        summary.get("shard"),
        settings.get("shard") if isinstance(settings, dict) else None,
    ):
        if isinstance(value, str) and (match := re.fullmatch(r"(\d+)/(\d+)", value)):
            return int(match.group(1)), int(match.group(2))
        if isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value):
            return value[0], value[1]
    return None


def one_format(inputs: list[MergeInput]) -> str:
    formats = {i.format for i in inputs if i.format is not None}
    if len(formats) > 1:
        which = ", ".join(f"{i.tree} ({i.format})" for i in inputs if i.format is not None)
        raise UsageError(f"the inputs hold different formats: {which}; merge each format apart")
    return formats.pop() if formats else "files"


def one_manifest(inputs: list[MergeInput]) -> None:
    known = [i for i in inputs if i.identity is not None and i.identity.manifests]
    for one in known[1:]:
        first = known[0]
        assert first.identity is not None
        assert one.identity is not None
        if not any(m.same(n) for m in first.identity.manifests for n in one.identity.manifests):
            raise UsageError(
                f"{one.tree} holds the jobs of the manifest "
                f"{manifest_names(one.identity.manifests)} and {first.tree} those of "
                f"{manifest_names(first.identity.manifests)}: shards of different manifests "
                "do not merge"
            )
    apis = {i.identity.api for i in inputs if i.identity is not None and i.identity.api}
    if len(apis) > 1:
        raise UsageError(f"the inputs were made against different APIs ({', '.join(sorted(apis))})")


def manifest_names(manifests: tuple[ManifestId, ...]) -> str:
    return ", ".join(m.name for m in manifests)


def missing_shards(inputs: list[MergeInput]) -> list[str]:
    sharded = [i for i in inputs if i.shard is not None]
    if not sharded:
        return []
    splits = {i.shard[1] for i in sharded if i.shard is not None}
    if len(splits) > 1:
        which = ", ".join(f"{i.tree} ({i.shard[0]}/{i.shard[1]})" for i in sharded if i.shard)
        raise UsageError(f"the inputs are shards of different splits: {which}")
    count = splits.pop()
    given: dict[int, MergeInput] = {}
    for one in sharded:
        assert one.shard is not None
        index = one.shard[0]
        if index in given:
            raise UsageError(
                f"shard {index} of {count} is given twice: {given[index].tree} and {one.tree}"
            )
        given[index] = one
    return [f"{shard_words((n, count))} is missing" for n in range(1, count + 1) if n not in given]


def unfinished(inputs: list[MergeInput]) -> list[str]:
    found = []
    for one in inputs:
        counts = one.summary.get("counts")
        left = counts.get("unfinished") if isinstance(counts, dict) else None
        unwritten = sum(
            1
            for record in one.records
            for entry in record.files[:1]
            if (place := member_of(entry.path)) and Path(place[0]).name not in one.shard_names
        )
        what = str(one.tree)
        if one.shard:
            index, count = one.shard
            what = f"shard {index} of {count} (task {task_of(one.shard)}, {one.tree})"
        if not one.summary:
            found.append(f"{what} is unfinished (no {SUMMARY_NAME}: its run never ended)")
        elif isinstance(left, int) and left > 0:
            found.append(f"{what} is unfinished ({counted(left, 'job')} left: run it again)")
        elif unwritten:
            found.append(
                f"{what} is unfinished ({counted(unwritten, 'job')} not in a written shard)"
            )
    return found


def api_of(inputs: list[MergeInput]) -> str:
    for one in inputs:
        if one.identity is not None and one.identity.api:
            return one.identity.api
    for one in inputs:
        base = one.summary.get("api_base")
        if isinstance(base, str) and base:
            return api_identity(base)
    return ""


def manifests_of(inputs: list[MergeInput]) -> tuple[ManifestId, ...]:
    found: list[ManifestId] = []
    for one in inputs:
        for manifest in one.identity.manifests if one.identity else ():
            if not any(m.same(manifest) for m in found):
                found.append(manifest)
    return tuple(found)
