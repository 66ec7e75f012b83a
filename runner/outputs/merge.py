"""``krea-batch merge``: the output folders of a split (``--shard I/N``) into one dataset.

Every format merges: loose files are linked or copied by their paths; shard files (tar,
parquet) are copied whole, never opened or re-encoded, numbered anew 00000, 00001, … in the
order of the shards, and the records' paths are rewritten to the new numbers. The merged
folder is a dataset of its own: results.jsonl, metadata.jsonl (files), summary.json,
README.md (the dataset card), report.html and krea-batch.json (its identity, with
``merged_from``). It has no journal: ``status`` reads results.jsonl where there is none.

What is checked before anything is written (a UsageError, exit 2): every input is a
krea-batch folder no live run holds; all share one format and one manifest; no input is the
output, inside it or around it; no job is in two shard inputs. What makes it incomplete
(IncompleteMerge, exit 3, nothing written; ``partial`` merges what is there and says what is
missing): a shard of the split not given, a shard whose run left jobs unfinished.

Resuming: a plan (.krea-batch/merge.json: which input file becomes which shard) is written
before any copy; files go in whole (hidden name, rename; one upload at a URL), and the files
that say what the folder holds are written last. A merge killed at any point is finished by
running it again; a rerun of a finished merge with nothing changed writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import jsontext
from runner.errors import RunnerError, UsageError
from runner.exitcodes import ExitCode
from runner.outputs.atomic import write_atomic
from runner.outputs.card import dataset_card, write_card
from runner.outputs.folder import OutputFolder
from runner.outputs.identity import (
    FolderIdentity,
    ManifestId,
    api_identity,
    parse_identity,
    write_identity,
)
from runner.outputs.images import file_sha256
from runner.outputs.layout import (
    CARD_NAME,
    IDENTITY_NAME,
    METADATA_NAME,
    REPORT_DATA_DIR,
    REPORT_NAME,
    RESULTS_NAME,
    STATE_DIR,
    SUMMARY_NAME,
    Layout,
)
from runner.outputs.metadata import metadata_rows
from runner.outputs.report import write_report
from runner.outputs.results_log import ResultsLog
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.shard_ledger import SHARD_LEDGER, ShardLedger
from runner.outputs.summary import summary as run_summary
from runner.outputs.trees import Tree, safe_relative, same_or_inside
from runner.sharding import shard_words, task_of
from runner.state.figures import stats_of
from runner.state.ledger import counts_of
from runner.state.records import RecordStatus, ResultRecord, latest_records
from runner.wording import counted

log = logging.getLogger(__name__)

PLAN_NAME = "merge.json"
SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet"}


class IncompleteMerge(RunnerError):
    """Shards of the split are missing or unfinished (exit 3; ``--partial`` merges anyway)."""


@dataclass
class MergeResult:
    summary: dict[str, Any]
    missing: list[str] = field(default_factory=list)  # what --partial left out, in words
    unchanged: bool = False  # a finished merge run again: nothing written

    @property
    def exit_code(self) -> int:
        counts = self.summary["counts"]
        return ExitCode.FAILED if counts["failed"] or counts["ambiguous_jobs"] else ExitCode.OK


@dataclass
class _Input:
    tree: Tree
    identity: FolderIdentity | None
    summary: dict[str, Any]
    records: list[ResultRecord]
    format: str | None
    shard: tuple[int, int] | None
    shard_names: set[str]  # the shard files written there
    sealed: dict[str, int] = field(default_factory=dict)  # shard name → size when sealed


def merge_folders(
    sources: Sequence[str | Path], out: str | Path, *, partial: bool = False
) -> dict[str, Any]:
    """Merge ``sources`` into ``out``; returns the merged summary.json (see ``merge``)."""
    return merge(sources, out, partial=partial).summary


def merge(sources: Sequence[str | Path], out: str | Path, *, partial: bool = False) -> MergeResult:
    """Combine the output folders ``sources`` (paths or URLs) into ``out`` (a path or URL)."""
    names = [str(s).rstrip("/") or str(s) for s in sources]
    target = str(out).rstrip("/") or str(out)
    _refuse_overlaps(names, target)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="krea-batch-merge-") as scratch:
        inputs = [_read_input(name, Path(scratch) / str(n)) for n, name in enumerate(names)]
        format = _one_format(inputs)
        _one_manifest(inputs)
        missing = _missing_shards(inputs) + _unfinished(inputs)
        if missing and not partial:
            raise IncompleteMerge(
                "; ".join(missing) + ": nothing merged (`--partial` merges what is there)"
            )
        records, copies = _plan(inputs, format)
        tree = Tree(target)
        result = _write(tree, names, format, inputs, records, copies, started)
    result.missing = missing
    return result


# ---- reading and checking the inputs ---------------------------------------------------------


def _refuse_overlaps(names: list[str], target: str) -> None:
    for name in names:
        if same_or_inside(target, name) and same_or_inside(name, target):
            raise UsageError(f"--out {target} is also an input: merge into a new folder")
        if same_or_inside(target, name):
            raise UsageError(f"--out {target} is inside the input {name}: merge into a new folder")
        if same_or_inside(name, target):
            raise UsageError(f"the input {name} is inside --out {target}: merge into a new folder")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{name} is given twice")
        seen.add(name)


def _read_input(name: str, scratch: Path) -> _Input:
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
        identity = parse_identity(_json(tree, IDENTITY_NAME))
        if not has_results and identity is None:
            raise UsageError(f"{name} holds no {RESULTS_NAME}: is it a krea-batch output folder?")
        summary = _json(tree, SUMMARY_NAME)
        summary = summary if isinstance(summary, dict) else {}
        records = latest_records(results)
        shard_names = tree.names(SHARDS_DIR)
        format = _format_of(tree, identity, records, shard_names)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({exc})") from exc
    for record in records:
        for entry in record["files"]:
            place = member_of(entry["path"])
            path = place[0] if place else entry["path"]
            if not safe_relative(path) or (place and not safe_relative(place[1])):
                raise UsageError(
                    f"{name}/{RESULTS_NAME}: job {record['key']} lists the file "
                    f"{entry['path'][:80]!r}, outside its folder; not merged"
                )
    shard = identity.shard if identity is not None and identity.shard else _summary_shard(summary)
    sealed = _sealed_sizes(tree)
    return _Input(tree, identity, summary, records, format, shard, shard_names, sealed)


def _sealed_sizes(tree: Tree) -> dict[str, int]:
    """The sizes its run sealed the folder's shards at (its ledger, in the folder or, for a
    URL, in the run's state folder on this machine; none known: empty)."""
    ledger = ShardLedger(tree.state / STATE_DIR / SHARD_LEDGER)
    return {name: sealed.size for name, sealed in ledger.sealed.items()}


def _json(tree: Tree, relative: str) -> Any:
    data = tree.read_bytes(relative)
    if data is None:
        return None
    try:
        return jsontext.loads(data)
    except ValueError:
        return None


def _format_of(
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
        for entry in record["files"]:
            place = member_of(entry["path"])
            if place is None:
                if not entry["path"].startswith("images/_unmatched/"):
                    return "files"
                continue
            return _format_of_suffix(Path(place[0]).suffix)
    for name in shards:
        found = _format_of_suffix(Path(name).suffix)
        if found is not None:
            return found
    return None


def _format_of_suffix(suffix: str) -> str | None:
    return next((f for f, s in SUFFIXES.items() if s == suffix), None)


def _summary_shard(summary: dict[str, Any]) -> tuple[int, int] | None:
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


def _one_format(inputs: list[_Input]) -> str:
    formats = {i.format for i in inputs if i.format is not None}
    if len(formats) > 1:
        which = ", ".join(f"{i.tree} ({i.format})" for i in inputs if i.format is not None)
        raise UsageError(f"the inputs hold different formats: {which}; merge each format apart")
    return formats.pop() if formats else "files"


def _one_manifest(inputs: list[_Input]) -> None:
    known = [i for i in inputs if i.identity is not None and i.identity.manifests]
    for one in known[1:]:
        first = known[0]
        assert first.identity is not None
        assert one.identity is not None
        if not any(m.same(n) for m in first.identity.manifests for n in one.identity.manifests):
            raise UsageError(
                f"{one.tree} holds the jobs of the manifest "
                f"{_names(one.identity.manifests)} and {first.tree} those of "
                f"{_names(first.identity.manifests)}: shards of different manifests do not merge"
            )
    apis = {i.identity.api for i in inputs if i.identity is not None and i.identity.api}
    if len(apis) > 1:
        raise UsageError(f"the inputs were made against different APIs ({', '.join(sorted(apis))})")


def _names(manifests: tuple[ManifestId, ...]) -> str:
    return ", ".join(m.name for m in manifests)


def _missing_shards(inputs: list[_Input]) -> list[str]:
    sharded = [i for i in inputs if i.shard is not None]
    if not sharded:
        return []
    splits = {i.shard[1] for i in sharded if i.shard is not None}
    if len(splits) > 1:
        which = ", ".join(f"{i.tree} ({i.shard[0]}/{i.shard[1]})" for i in sharded if i.shard)
        raise UsageError(f"the inputs are shards of different splits: {which}")
    count = splits.pop()
    given: dict[int, _Input] = {}
    for one in sharded:
        assert one.shard is not None
        index = one.shard[0]
        if index in given:
            raise UsageError(
                f"shard {index} of {count} is given twice: {given[index].tree} and {one.tree}"
            )
        given[index] = one
    return [f"{shard_words((n, count))} is missing" for n in range(1, count + 1) if n not in given]


def _unfinished(inputs: list[_Input]) -> list[str]:
    found = []
    for one in inputs:
        counts = one.summary.get("counts")
        left = counts.get("unfinished") if isinstance(counts, dict) else None
        unwritten = sum(
            1
            for record in one.records
            for entry in record["files"][:1]
            if (place := member_of(entry["path"])) and Path(place[0]).name not in one.shard_names
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


# ---- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Copy:
    source: int  # the input's position
    path: str  # in the input
    target: str  # in the merged folder
    size: int | None  # of a shard (loose files are checked by sha256)
    sha256: str | None = None


def _better(new: ResultRecord, old: ResultRecord | None) -> bool:
    done = RecordStatus.COMPLETED
    return old is None or (new["status"] == done and old["status"] != done)


def _plan(inputs: list[_Input], format: str) -> tuple[list[ResultRecord], list[_Copy]]:
    """The merged records (paths rewritten) and every file to copy, in a fixed order: inputs
    by shard index (then as given), shards by their number."""
    order = sorted(range(len(inputs)), key=lambda n: (_index(inputs[n]), n))
    chosen: dict[str, tuple[int, ResultRecord]] = {}
    for n in order:
        one = inputs[n]
        for record in one.records:
            if _unwritten(one, record):
                continue  # --partial: a job whose shard was never written is not in the data
            previous = chosen.get(record["key"])
            both = previous is not None and _completed(previous[1]) and _completed(record)
            if both and format != "files":
                assert previous is not None
                raise UsageError(
                    f"job {record['key']} is in both {inputs[previous[0]].tree} and "
                    f"{one.tree}: shards of one split hold each job once"
                )
            if _better(record, previous[1] if previous else None):
                chosen[record["key"]] = (n, record)
    renumbered: dict[tuple[int, str], str] = {}
    copies: list[_Copy] = []
    suffix = SUFFIXES.get(format, "")
    used = {
        (n, place[0])
        for n, record in chosen.values()
        for entry in record["files"]
        if (place := member_of(entry["path"])) is not None
    }
    for n in order:
        for shard in sorted(s for m, s in used if m == n):
            new = f"{SHARDS_DIR}/{len(renumbered):05d}{suffix}"
            renumbered[(n, shard)] = new
            size = inputs[n].tree.size(shard)
            _check_sealed(inputs[n], shard, size)
            copies.append(_Copy(n, shard, new, size))
    records = []
    for n, record in chosen.values():
        files = []
        for entry in record["files"]:
            place = member_of(entry["path"])
            if place is None:
                copies.append(_Copy(n, entry["path"], entry["path"], None, entry["sha256"]))
                files.append(entry)
            else:
                files.append({**entry, "path": f"{renumbered[(n, place[0])]}#{place[1]}"})
        records.append({**record, "files": files})
    records.sort(key=lambda r: (r["index"], r["key"]))
    return records, copies  # type: ignore[return-value]


def _check_sealed(one: _Input, shard: str, size: int | None) -> None:
    """A shard merged is the shard its run sealed: one of another size is refused."""
    sealed = one.sealed.get(Path(shard).name)
    if sealed is not None and size is not None and size != sealed:
        raise UsageError(
            f"{one.tree}/{shard} is {size:,} bytes where its run sealed {sealed:,}: run that "
            "shard's `krea-batch run` command again to repair it (nothing is paid again), "
            "then merge"
        )


def _index(one: _Input) -> int:
    return one.shard[0] if one.shard is not None else 1 << 30


def _completed(record: ResultRecord) -> bool:
    return record["status"] == RecordStatus.COMPLETED and bool(record["files"])


def _unwritten(one: _Input, record: ResultRecord) -> bool:
    return any(
        (place := member_of(entry["path"])) is not None
        and Path(place[0]).name not in one.shard_names
        for entry in record["files"]
    )


def _digest(names: list[str], records: list[ResultRecord], copies: list[_Copy]) -> str:
    """What the merge makes, in one hash: the same inputs holding the same gives the same."""
    digest = hashlib.sha256(json.dumps(names).encode())
    for record in records:
        digest.update(json.dumps([record["key"], record["status"], record["files"]]).encode())
    for copy in copies:
        digest.update(json.dumps([copy.source, copy.path, copy.target, copy.size]).encode())
    return digest.hexdigest()


# ---- writing the merged folder ---------------------------------------------------------------


def _write(
    tree: Tree,
    names: list[str],
    format: str,
    inputs: list[_Input],
    records: list[ResultRecord],
    copies: list[_Copy],
    started: float,
) -> MergeResult:
    digest = _digest(names, records, copies)
    if tree.local is None:
        _check_bucket(tree)
    plan_path = Layout(tree.state).state / PLAN_NAME
    _refuse_foreign(tree, names, _read_plan(plan_path))  # before the lock makes a state folder
    with OutputFolder(tree.state) as folder:
        plan = _read_plan(plan_path)
        if plan.get("digest") == digest and plan.get("done") and _all_there(tree, copies):
            log.debug("%s: already merged from these folders; nothing written", tree)
            summary = _json(tree, SUMMARY_NAME)
            if isinstance(summary, dict) and "counts" in summary:
                return MergeResult(summary, unchanged=True)
        trusted = {
            target: tuple(source)
            for target, source in (plan.get("shards") or {}).items()
            if isinstance(source, list)
        }
        shards = {c.target: [names[c.source], c.path, c.size] for c in copies if c.size is not None}
        _write_plan(plan_path, names, digest, shards, done=False)
        for copy in copies:
            _copy_one(tree, inputs, names, copy, trusted)
        for stale in tree.names(SHARDS_DIR) - {Path(t).name for t in shards}:
            tree.remove(f"{SHARDS_DIR}/{stale}")  # an earlier plan's, or a copy cut short
        summary = _finish(tree, folder, names, format, inputs, records, started)
        _write_plan(plan_path, names, digest, shards, done=True)
    return MergeResult(summary)


def _check_bucket(tree: Tree) -> None:
    assert tree.remote is not None
    tree.remote.check()


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_plan(
    path: Path, names: list[str], digest: str, shards: dict[str, list[Any]], *, done: bool
) -> None:
    plan = {"merged_from": names, "digest": digest, "shards": shards, "done": done}
    write_atomic(path, json.dumps(plan, indent=1, ensure_ascii=False) + "\n")


def _refuse_foreign(tree: Tree, names: list[str], plan: dict[str, Any]) -> None:
    """An output that holds anything must be a merge of these very folders (begun or done)."""
    held = tree.names() - {STATE_DIR}
    if not held or _same_inputs(plan.get("merged_from"), names):
        return
    identity = parse_identity(_json(tree, IDENTITY_NAME))
    if identity is not None and _same_inputs(list(identity.merged_from), names):
        return
    raise UsageError(
        f"--out {tree} already holds files and is no merge of these folders: "
        "merge into a new folder"
    )


def _same_inputs(earlier: Any, names: list[str]) -> bool:
    """The same inputs, in the same order (a path however spelt: ``./a`` is ``a``)."""
    if not isinstance(earlier, list) or len(earlier) != len(names):
        return False
    return all(
        same_or_inside(str(a), b) and same_or_inside(b, str(a))
        for a, b in zip(earlier, names, strict=True)
    )


def _all_there(tree: Tree, copies: list[_Copy]) -> bool:
    return all(c.size is None or tree.size(c.target) == c.size for c in copies)


def _copy_one(
    tree: Tree,
    inputs: list[_Input],
    names: list[str],
    copy: _Copy,
    trusted: dict[str, tuple[Any, ...]],
) -> None:
    source = inputs[copy.source].tree
    if copy.size is not None:  # a shard: there already when an earlier try copied it whole
        was = trusted.get(copy.target)
        if (
            was == (names[copy.source], copy.path, copy.size)
            and tree.size(copy.target) == copy.size
        ):
            return
    elif tree.size(copy.target) is not None:  # a loose file: there already if its sha256 says
        if tree.local is None or file_sha256(tree.local / copy.target) == copy.sha256:
            return
        raise UsageError(f"{tree}/{copy.target} exists with other content: merge into a new folder")
    tree.copy_from(source, copy.path, copy.target)


def _finish(
    tree: Tree,
    folder: OutputFolder,
    names: list[str],
    format: str,
    inputs: list[_Input],
    records: list[ResultRecord],
    started: float,
) -> dict[str, Any]:
    """Write what says what the folder holds (locally: in it; for a URL: in its state folder,
    then put there), the identity last."""
    root = folder.root
    ResultsLog(folder.results_path).rewrite(records)
    written = [RESULTS_NAME]
    if format == "files":  # image sizes from their headers, or (at a URL) as requested
        folder.write_metadata(metadata_rows(root, records))
        written.append(METADATA_NAME)
    counts = counts_of(records)
    failed = counts.failed or counts.ambiguous_jobs
    summary = run_summary(
        out=str(tree),
        stats=stats_of(counts, started, time.time()),
        records=len(records),
        exit_code=ExitCode.FAILED if failed else ExitCode.OK,
        merged_from=names,
    )
    folder.write_summary(summary)
    models = sorted({r["model"] for r in records if r["status"] == RecordStatus.COMPLETED})
    var_names = sorted({name for r in records for name in r["vars"]})
    card = dataset_card(format, counts.completed, models, summary, var_names=var_names)
    write_card(Layout(root).card, card)
    write_report(root, records, summary, shards=tree)
    written += [SUMMARY_NAME, CARD_NAME, REPORT_NAME]
    identity = FolderIdentity(
        format=format,
        api=_api(inputs),
        manifests=_manifests(inputs),
        merged_from=tuple(names),
    )
    write_identity(root / IDENTITY_NAME, identity)
    written.append(IDENTITY_NAME)
    if tree.local is None:
        for path in _report_files(root):
            tree.put(path, path.relative_to(root).as_posix())
        for name in written:
            if (root / name).exists():
                tree.put(root / name, name)
    return summary


def _report_files(root: Path) -> Iterator[Path]:
    data = root / REPORT_DATA_DIR
    if data.is_dir():
        yield from sorted(p for p in data.rglob("*") if p.is_file())


def _api(inputs: list[_Input]) -> str:
    for one in inputs:
        if one.identity is not None and one.identity.api:
            return one.identity.api
    for one in inputs:
        base = one.summary.get("api_base")
        if isinstance(base, str) and base:
            return api_identity(base)
    return ""


def _manifests(inputs: list[_Input]) -> tuple[ManifestId, ...]:
    found: list[ManifestId] = []
    for one in inputs:
        for manifest in one.identity.manifests if one.identity else ():
            if not any(m.same(manifest) for m in found):
                found.append(manifest)
    return tuple(found)
