"""``krea-batch verify OUT``: everything an output folder holds, checked against what it
recorded (pure checking; runner.cli.verify prints the report).

- Each shard the ledger (``.krea-batch/shards.jsonl``) sealed: its size and whole-file sha256
  (a match proves every member). One that differs, is missing or does not open is checked
  member by member against the records' sha256 and marked damaged in the ledger, so that the
  next run rebuilds it from the members that still match and fetches the rest again from their
  jobs. A shard the ledger does not know is checked member by member too.
- A job in two shards: a member in two shard files, or records of one job naming two shards.
- Staged images (shard formats, a shard not written yet) and loose images (``files``, and the
  images of ambiguous jobs): each there with its record's size and sha256.
- For a URL: the ledger and records come from the run's local state folder; the destination's
  shards are listed with their sizes and downloaded one at a time to a temporary file.

Nothing read from disk or the destination raises: what cannot be read is a finding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from runner.errors import UsageError
from runner.outputs.destination import Destination, default_state_dir, destination_for, is_url
from runner.outputs.images import inside
from runner.outputs.layout import Layout
from runner.outputs.shard_files import SHARDS_DIR
from runner.outputs.shard_ledger import SHARD_LEDGER, Sealed, ShardLedger
from runner.outputs.shard_reading import Expected, ShardRead, file_problem, read_parquet, read_tar
from runner.outputs.verify_findings import (
    JobRef,
    Problem,
    Report,
    ShardCheck,
    kind_of,
    members_text,
)
from runner.outputs.verify_records import SHARD_NAME, Recorded, format_of, read_recorded

STAGING = "staging"  # below .krea-batch/ (runner.outputs.writers.shards.STAGING_DIR)

# (bytes done so far, bytes to do in all, what is being read)
OnProgress = Callable[[int, int, str], None]


def verify(
    out: str,
    *,
    state_dir: str | Path | None = None,
    on_progress: OnProgress | None = None,
) -> Report:
    """Check the folder (or URL) ``out``; shards found damaged are marked in its ledger unless
    a live run holds the folder. A UsageError for what is no krea-batch folder."""
    remote = is_url(out)
    if state_dir is not None:
        root = Path(state_dir)
    else:
        root = default_state_dir(out) if remote else Path(out)
    layout = Layout(root)
    if not (layout.state.is_dir() or layout.results.is_file()):
        if remote:
            raise UsageError(
                f"no state folder for {out} at {root}: verify reads the ledger and the records "
                "from the run's local state folder; pass the run's --state-dir"
            )
        what = "no such folder" if not root.exists() else "no results.jsonl, no .krea-batch/"
        raise UsageError(f"{root} is not a krea-batch output folder ({what})")
    destination = destination_for(out)
    if remote:
        destination.check()
    with _locked(layout) as (held_by, unwritable):
        records = read_recorded(layout)
        fmt = format_of(layout, records)
        report = Report(out, str(root), fmt, held_by=held_by, unwritable=unwritable)
        _Checker(report, layout, destination, records, on_progress).run()
    return report


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[tuple[str | None, str | None]]:
    """The folder's lock, held while checking so that no run starts meanwhile: yields who
    holds it instead (a live run: read only) and why the folder cannot be written, if so."""
    if not layout.state.is_dir():
        yield None, None
        return
    try:
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        yield None, f"cannot open {layout.lock}: {exc.strerror or exc}"
        return
    with os.fdopen(fd, "r+", encoding="utf-8", errors="replace") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            yield (lock.read(200).strip() or "another process"), None
            return
        except OSError as exc:
            yield None, f"cannot lock {layout.lock}: {exc.strerror or exc}"
            return
        try:
            with contextlib.suppress(OSError):
                lock.seek(0)
                lock.truncate()
                lock.write(f"pid {os.getpid()} (krea-batch verify)\n")
                lock.flush()
            yield None, None
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class _Checker:
    def __init__(
        self,
        report: Report,
        layout: Layout,
        destination: Destination,
        records: Recorded,
        on_progress: OnProgress | None,
    ) -> None:
        self.report = report
        self.layout = layout
        self.destination = destination
        self.records = records
        self.on_progress = on_progress
        self.done = 0
        self.total = 0
        self.ledger = ShardLedger(layout.state / SHARD_LEDGER)
        self.members: dict[str, list[str]] = {}  # image member → the shards holding it

    def advance(self, size: int, what: str) -> None:
        self.done += size
        if self.on_progress is not None:
            self.on_progress(self.done, self.total, what)

    # ---- the whole ---------------------------------------------------------------------

    def run(self) -> None:
        report, records = self.report, self.records
        local = self._local_shards()
        remote = self._remote_shards()
        present = {**local, **remote}
        names = sorted(set(self.ledger.sealed) | set(self.ledger.damaged) | set(present))
        unwritten = [
            (name, member, expected)
            for name, members in sorted(records.by_shard.items())
            if name not in names
            for member, expected in members.items()
        ]
        loose_here = not (self.destination.remote and report.format == "files")
        self.total = (
            sum(present.values())
            + sum(expected.size for _, _, expected in unwritten)
            + sum(expected.size for _, expected in records.loose)
        )
        self.advance(0, "")
        with self._temporary() as scratch:
            for name in names:
                report.shards.append(self._shard(name, local, remote, scratch))
            for name, member, expected in unwritten:
                self._staged(name, member, expected)
            for path, expected in records.loose:
                self._loose(path, expected, scratch, here=loose_here)
        report.problems.extend(records.not_ours)
        for member, holding in sorted(self.members.items()):
            if len(holding) > 1:
                ref = records.by_member.get(member) or JobRef(_key_of(member), None, member)
                where = ", ".join(sorted(holding))
                report.problems.append(Problem("two shards", where, (ref,), "one image in each"))
        for key in sorted(records.two_records):
            ref, named = records.two_records[key]
            report.problems.append(
                Problem("two records", ", ".join(sorted(named)), (ref,), "records name both")
            )
        self._mark()

    def _local_shards(self) -> dict[str, int]:
        folder = self.layout.root / SHARDS_DIR
        found = {}
        with contextlib.suppress(OSError):
            for path in folder.iterdir():
                if SHARD_NAME.fullmatch(path.name) and path.is_file():
                    with contextlib.suppress(OSError):
                        found[path.name] = path.stat().st_size
        return found

    def _remote_shards(self) -> dict[str, int]:
        if not self.destination.remote:
            return {}
        try:
            sizes = self.destination.sizes(SHARDS_DIR)
        except OSError as exc:
            raise UsageError(f"cannot list {self.destination.url}/{SHARDS_DIR}: {exc}") from exc
        return {name: size for name, size in sizes.items() if SHARD_NAME.fullmatch(name)}

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[Path | None]:
        """A folder for one downloaded file at a time (a URL only), beside the run's state
        where there is room for a shard, else the system's."""
        if not self.destination.remote:
            yield None
            return
        try:
            scratch = Path(tempfile.mkdtemp(prefix=".verify-", dir=self.layout.state))
        except OSError:
            scratch = Path(tempfile.mkdtemp(prefix="krea-batch-verify-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ---- shards ------------------------------------------------------------------------

    def _shard(
        self, name: str, local: dict[str, int], remote: dict[str, int], scratch: Path | None
    ) -> ShardCheck:
        expected = self.records.by_shard.get(name, {})
        check = ShardCheck(name, "ok", images=len(expected))
        self.report.images += len(expected)
        sealed = self.ledger.sealed.get(name)
        if name in self.ledger.damaged:
            check.earlier = True
        relative = f"{SHARDS_DIR}/{name}"
        if name in remote:
            assert scratch is not None
            copy = scratch / name
            try:
                fetched = self.destination.fetch(relative, copy)
            except OSError as exc:
                check.state, check.why = "unreadable", f"could not be downloaded ({exc})"
                self.advance(remote[name], name)
                return check
            if not fetched:
                return self._judge(check, sealed, None, expected)
            try:
                return self._judge(check, sealed, copy, expected)
            finally:
                copy.unlink(missing_ok=True)
        if name in local:
            check = self._judge(check, sealed, self.layout.root / relative, expected)
            if self.destination.remote and check.state == "ok":
                check.state = "not uploaded"
                check.why = "written here, not at the destination yet (the next run puts it)"
            return check
        return self._judge(check, sealed, None, expected)

    def _judge(
        self,
        check: ShardCheck,
        sealed: Sealed | None,
        path: Path | None,
        expected: dict[str, Expected],
    ) -> ShardCheck:
        """Compare one shard file (None: there is none) with its seal and its records."""
        name = check.name
        if path is None:
            found = ShardRead(0, "", {}, None)
        elif name.endswith(".tar"):
            found = read_tar(path, lambda n: self.advance(n, name))
        else:
            found = read_parquet(path, lambda n: self.advance(n, name), sealed)
        for member in found.members:
            self.members.setdefault(member, []).append(name)
        for member, want in sorted(expected.items()):
            ref = JobRef(want.key, want.job_id, member)
            if member not in found.members:
                check.missing.append(ref)
            elif found.members[member] not in (None, want.sha256):
                check.changed.append(ref)
        check.unrecorded = sum(1 for member in found.members if member not in expected)
        reasons = []
        if path is None:
            reasons.append("missing")
        elif sealed is not None and found.size != sealed.size:
            reasons.append(f"{found.size:,} bytes where {sealed.size:,} were sealed")
        elif sealed is not None and sealed.sha256 and found.sha256 != sealed.sha256:
            reasons.append("its sha256 is not the one sealed")
        if found.error is not None:
            reasons.append(f"it does not read to its end ({found.error})")
        if check.missing or check.changed:
            reasons.append(members_text(check))
        if check.earlier:
            check.state = "damaged"
            check.why = self.ledger.damaged[name] + " (marked by an earlier check)"
        elif sealed is None and not expected:
            # Never marked: a run would delete it, and no record says it is ours to rebuild.
            check.state, check.why = "stray", "not in the ledger, and no record names it"
        elif reasons:
            check.state = "damaged"
            check.why = ("not in the ledger; " if sealed is None else "") + "; ".join(reasons)
        elif sealed is None:
            check.state = "unknown"
            check.why = "not in the ledger: its members match their records (a run records it)"
        return check

    def _mark(self) -> None:
        """Mark the shards found damaged in the ledger (the next run rebuilds them), unless a
        live run holds the folder or it cannot be written."""
        report = self.report
        if report.held_by is not None or report.unwritable is not None:
            return
        for check in report.shards:
            if check.state != "damaged" or check.earlier:
                continue
            try:
                self.layout.state.mkdir(parents=True, exist_ok=True)
                self.ledger.mark_damaged(check.name, check.why)
            except OSError as exc:
                report.unwritable = f"cannot write {self.ledger.path}: {exc.strerror or exc}"
                return
            check.marked = True

    # ---- images outside shards -----------------------------------------------------------

    def _staged(self, shard: str, member: str, expected: Expected) -> None:
        """An image of a shard not written yet: staged, as its record says."""
        self.report.staged += 1
        self.report.images += 1
        path = self.layout.state / STAGING / member
        problem = file_problem(path, expected, lambda n: self.advance(n, member))
        if problem is not None:
            ref = JobRef(expected.key, expected.job_id, member)
            where = f"{self.layout.state.name}/{STAGING}/{member}"
            detail = f"{problem}; for shard {shard}, not written yet"
            self.report.problems.append(
                Problem(f"staged {kind_of(problem)}", where, (ref,), detail)
            )

    def _loose(self, path: str, expected: Expected, scratch: Path | None, here: bool) -> None:
        self.report.images += 1
        ref = JobRef(expected.key, expected.job_id, path)
        local = inside(self.layout.root, path) if here else None
        if here and local is None:
            self.report.problems.append(
                Problem("not ours", path, (ref,), "its record names a file outside the folder")
            )
            return
        if local is not None:
            problem = file_problem(local, expected, lambda n: self.advance(n, path))
        else:
            assert scratch is not None
            problem = self._remote_file_problem(path, expected, scratch)
        if problem is not None:
            self.report.problems.append(Problem(f"image {kind_of(problem)}", path, (ref,), problem))

    def _remote_file_problem(self, path: str, expected: Expected, scratch: Path) -> str | None:
        copy = scratch / "image"
        try:
            if not self.destination.fetch(path, copy):
                self.advance(expected.size, path)
                return "missing"
            return file_problem(copy, expected, lambda n: self.advance(n, path))
        except OSError as exc:
            return f"missing: could not be downloaded ({exc})"
        finally:
            copy.unlink(missing_ok=True)


def _key_of(member: str) -> str:
    """The job key of a member no record names: its stem, less an image number."""
    stem = member.rpartition(".")[0] or member
    return re.sub(r"-\d+$", "", stem)
