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

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.errors import RunnerError, UsageError
from runner.exitcodes import ExitCode
from runner.outputs.card import dataset_card, write_card
from runner.outputs.folder import OutputFolder
from runner.outputs.identity import (
    FolderIdentity,
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
    SUMMARY_NAME,
    Layout,
)
from runner.outputs.merge_inputs import (
    SUFFIXES,
    MergeInput,
    api_of,
    manifests_of,
    missing_shards,
    one_format,
    one_manifest,
    read_input,
    read_json,
    unfinished,
)
from runner.outputs.merge_plan import (
    Copy,
    plan_digest,
    read_plan,
    refuse_foreign,
    write_plan,
)
from runner.outputs.metadata import metadata_rows
from runner.outputs.report import write_report
from runner.outputs.results_log import ResultsLog
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.summary import summary as run_summary
from runner.outputs.trees import Tree, same_or_inside
from runner.state.figures import stats_of
from runner.state.ledger import counts_of
from runner.state.records import RecordStatus, ResultRecord

log = logging.getLogger(__name__)

PLAN_NAME = "merge.json"


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
        inputs = [read_input(name, Path(scratch) / str(n)) for n, name in enumerate(names)]
        format = one_format(inputs)
        one_manifest(inputs)
        missing = missing_shards(inputs) + unfinished(inputs)
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


# ---- the plan --------------------------------------------------------------------------------


def _better(new: ResultRecord, old: ResultRecord | None) -> bool:
    done = RecordStatus.COMPLETED
    return old is None or (new.status == done and old.status != done)


def _plan(inputs: list[MergeInput], format: str) -> tuple[list[ResultRecord], list[Copy]]:
    """The merged records (paths rewritten) and every file to copy, in a fixed order: inputs
    by shard index (then as given), shards by their number."""
    order = sorted(range(len(inputs)), key=lambda n: (_index(inputs[n]), n))
    chosen: dict[str, tuple[int, ResultRecord]] = {}
    for n in order:
        one = inputs[n]
        for record in one.records:
            if _unwritten(one, record):
                continue  # --partial: a job whose shard was never written is not in the data
            previous = chosen.get(record.key)
            both = previous is not None and _completed(previous[1]) and _completed(record)
            if both and format != "files":
                assert previous is not None
                raise UsageError(
                    f"job {record.key} is in both {inputs[previous[0]].tree} and "
                    f"{one.tree}: shards of one split hold each job once"
                )
            if _better(record, previous[1] if previous else None):
                chosen[record.key] = (n, record)
    renumbered: dict[tuple[int, str], str] = {}
    copies: list[Copy] = []
    suffix = SUFFIXES.get(format, "")
    used = {
        (n, place[0])
        for n, record in chosen.values()
        for entry in record.files
        if (place := member_of(entry.path)) is not None
    }
    for n in order:
        for shard in sorted(s for m, s in used if m == n):
            new = f"{SHARDS_DIR}/{len(renumbered):05d}{suffix}"
            renumbered[(n, shard)] = new
            size = inputs[n].tree.size(shard)
            _check_sealed(inputs[n], shard, size)
            copies.append(Copy(n, shard, new, size))
    records = []
    for n, record in chosen.values():
        files = []
        for entry in record.files:
            place = member_of(entry.path)
            if place is None:
                copies.append(Copy(n, entry.path, entry.path, None, entry.sha256))
                files.append(entry)
            else:
                files.append(replace(entry, path=f"{renumbered[(n, place[0])]}#{place[1]}"))
        records.append(record.with_files(files))
    records.sort(key=lambda r: (r.index, r.key))
    return records, copies


def _check_sealed(one: MergeInput, shard: str, size: int | None) -> None:
    """A shard merged is the shard its run sealed: one of another size is refused."""
    sealed = one.sealed.get(Path(shard).name)
    if sealed is not None and size is not None and size != sealed:
        raise UsageError(
            f"{one.tree}/{shard} is {size:,} bytes where its run sealed {sealed:,}: run that "
            "shard's `krea-batch run` command again to repair it (nothing is paid again), "
            "then merge"
        )


def _index(one: MergeInput) -> int:
    return one.shard[0] if one.shard is not None else 1 << 30


def _completed(record: ResultRecord) -> bool:
    return record.status == RecordStatus.COMPLETED and bool(record.files)


def _unwritten(one: MergeInput, record: ResultRecord) -> bool:
    return any(
        (place := member_of(entry.path)) is not None and Path(place[0]).name not in one.shard_names
        for entry in record.files
    )


# ---- writing the merged folder ---------------------------------------------------------------


def _write(
    tree: Tree,
    names: list[str],
    format: str,
    inputs: list[MergeInput],
    records: list[ResultRecord],
    copies: list[Copy],
    started: float,
) -> MergeResult:
    digest = plan_digest(names, records, copies)
    if tree.local is None:
        _check_bucket(tree)
    plan_path = Layout(tree.state).state / PLAN_NAME
    refuse_foreign(tree, names, read_plan(plan_path))  # before the lock makes a state folder
    with OutputFolder(tree.state) as folder:
        plan = read_plan(plan_path)
        if plan.get("digest") == digest and plan.get("done") and _all_there(tree, copies):
            log.debug("%s: already merged from these folders; nothing written", tree)
            summary = read_json(tree, SUMMARY_NAME)
            if isinstance(summary, dict) and "counts" in summary:
                return MergeResult(summary, unchanged=True)
        trusted = {
            target: tuple(source)
            for target, source in (plan.get("shards") or {}).items()
            if isinstance(source, list)
        }
        shards = {c.target: [names[c.source], c.path, c.size] for c in copies if c.size is not None}
        write_plan(plan_path, names, digest, shards, done=False)
        for copy in copies:
            _copy_one(tree, inputs, names, copy, trusted)
        for stale in tree.names(SHARDS_DIR) - {Path(t).name for t in shards}:
            tree.remove(f"{SHARDS_DIR}/{stale}")  # an earlier plan's, or a copy cut short
        summary = _finish(tree, folder, names, format, inputs, records, started)
        write_plan(plan_path, names, digest, shards, done=True)
    return MergeResult(summary)


def _check_bucket(tree: Tree) -> None:
    assert tree.remote is not None
    tree.remote.check()


def _all_there(tree: Tree, copies: list[Copy]) -> bool:
    return all(c.size is None or tree.size(c.target) == c.size for c in copies)


def _copy_one(
    tree: Tree,
    inputs: list[MergeInput],
    names: list[str],
    copy: Copy,
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
    inputs: list[MergeInput],
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
    models = sorted({r.model for r in records if r.status == RecordStatus.COMPLETED})
    var_names = sorted({name for r in records for name in r.vars})
    card = dataset_card(format, counts.completed, models, summary, var_names=var_names)
    write_card(Layout(root).card, card)
    write_report(root, records, summary, shards=tree)
    written += [SUMMARY_NAME, CARD_NAME, REPORT_NAME]
    identity = FolderIdentity(
        format=format,
        api=api_of(inputs),
        manifests=manifests_of(inputs),
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
