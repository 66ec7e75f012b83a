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
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runner.errors import UsageError
from runner.outputs import arrow
from runner.outputs.destination import Destination, default_state_dir, destination_for, is_url
from runner.outputs.images import inside
from runner.outputs.layout import Layout
from runner.outputs.records import RecordStatus, read_records
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.shard_ledger import CHUNK, SHARD_LEDGER, Sealed, ShardLedger, file_digest

STAGING = "staging"  # below .krea-batch/ (runner.outputs.writers.shards.STAGING_DIR)
SHARD_NAME = re.compile(r"\d{5,}\.(tar|parquet)")
MAX_SHOWN = 5  # jobs named per finding in the text; the JSON names them all

# (bytes done so far, bytes to do in all, what is being read)
OnProgress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class JobRef:
    """One image of a job: which job, and where the image is (a member, a file)."""

    key: str
    job_id: str | None
    image: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "job_id": self.job_id, "image": self.image}


@dataclass(slots=True)
class ShardCheck:
    """One shard file, as found."""

    name: str  # "00003.tar"
    # "ok"; "unknown": not in the ledger, its members fine (a run records it); "damaged" (marked
    # in the ledger: the next run rebuilds it); "stray": not in the ledger and no record names
    # it; "unreadable": could not be downloaded; "not uploaded": only in the state folder
    state: str
    why: str = ""
    images: int = 0  # members its records name
    missing: list[JobRef] = field(default_factory=list)  # named by a record, not in the shard
    changed: list[JobRef] = field(default_factory=list)  # there with other bytes
    unrecorded: int = 0  # image members no record names for this shard
    marked: bool = False  # marked damaged in the ledger by this check
    earlier: bool = False  # the ledger already said it was damaged

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": f"{SHARDS_DIR}/{self.name}",
            "state": self.state,
            "why": self.why,
            "images": self.images,
            "missing": [job.to_json() for job in self.missing],
            "changed": [job.to_json() for job in self.changed],
            "unrecorded": self.unrecorded,
            "marked_damaged": self.marked,
            "marked_before": self.earlier,
        }


@dataclass(frozen=True, slots=True)
class Problem:
    """Anything else found wrong: ``kind`` is ``image missing``, ``image changed``,
    ``staged missing``, ``staged changed``, ``two shards``, ``two records``, ``not ours``."""

    kind: str
    where: str
    jobs: tuple[JobRef, ...]
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": self.where,
            "detail": self.detail,
            "jobs": [job.to_json() for job in self.jobs],
        }


@dataclass(slots=True)
class Report:
    target: str  # the folder or URL verified
    state: str  # the folder holding the ledger and the records
    format: str
    shards: list[ShardCheck] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    images: int = 0  # images checked: members, loose files, staged
    staged: int = 0
    held_by: str | None = None  # a live run holds the folder: read only, nothing marked
    unwritable: str | None = None  # why the ledger could not be written (nothing marked)

    @property
    def wrong(self) -> list[ShardCheck]:
        """The shards found wrong (every state but ok and unknown)."""
        return [s for s in self.shards if s.state not in ("ok", "unknown")]

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "state_dir": self.state,
            "format": self.format,
            "ok": self.ok,
            "shards": len(self.shards),
            "images": self.images,
            "staged": self.staged,
            "held_by": self.held_by,
            "unwritable": self.unwritable,
            "shard_checks": [s.to_json() for s in self.shards if s.state != "ok" or s.unrecorded],
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class _Expected:
    key: str
    job_id: str | None
    sha256: str
    size: int


@dataclass(slots=True)
class _Records:
    """What results.jsonl says, as the checks need it."""

    by_shard: dict[str, dict[str, _Expected]] = field(default_factory=dict)  # name → member
    loose: list[tuple[str, _Expected]] = field(default_factory=list)  # (path, expected)
    by_member: dict[str, JobRef] = field(default_factory=dict)
    two_records: dict[str, tuple[JobRef, set[str]]] = field(default_factory=dict)
    not_ours: list[Problem] = field(default_factory=list)
    shard_format: bool = False


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
        records = _read_records(layout)
        fmt = _format_of(layout, records)
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


def _read_records(layout: Layout) -> _Records:
    """The current record of each job (the last line wins); records of one job that name two
    shards are noted."""
    latest: dict[str, tuple[str | None, list[tuple[str, _Expected]]]] = {}
    shards_of: dict[str, set[str]] = {}
    try:
        for record in read_records(layout.results):
            if record["status"] not in (RecordStatus.COMPLETED, RecordStatus.AMBIGUOUS):
                latest.pop(record["key"], None)  # failed since: it holds no image
                continue
            files = [
                (
                    entry["path"],
                    _Expected(record["key"], record["job_id"], entry["sha256"], entry["bytes"]),
                )
                for entry in record["files"]
            ]
            latest[record["key"]] = (record["job_id"], files)
            for path, _ in files:
                place = member_of(path)
                if place is not None:
                    shards_of.setdefault(record["key"], set()).add(place[0])
    except OSError as exc:
        raise UsageError(f"cannot read {layout.results}: {exc.strerror or exc}") from exc
    found = _Records()
    for key, (job_id, files) in latest.items():
        for path, expected in files:
            place = member_of(path)
            if place is None:
                found.loose.append((path, expected))
                continue
            found.shard_format = True
            shard, member = place
            name = shard.removeprefix(SHARDS_DIR + "/")
            ref = JobRef(key, job_id, member)
            if not SHARD_NAME.fullmatch(name):
                found.not_ours.append(
                    Problem("not ours", path, (ref,), "its record names no shard of this folder")
                )
                continue
            found.by_shard.setdefault(name, {})[member] = expected
            found.by_member[member] = ref
        if len(shards_of.get(key, ())) > 1:
            shards = {s.removeprefix(SHARDS_DIR + "/") for s in shards_of[key]}
            found.two_records[key] = (JobRef(key, job_id, ""), shards)
    return found


def _format_of(layout: Layout, records: _Records) -> str:
    try:
        held = (layout.state / "format").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        held = ""
    if held in ("files", "webdataset", "parquet"):
        return held
    if any(name.endswith(".parquet") for name in records.by_shard):
        return "parquet"
    return "webdataset" if records.by_shard else "files"


class _Checker:
    def __init__(
        self,
        report: Report,
        layout: Layout,
        destination: Destination,
        records: _Records,
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
        expected: dict[str, _Expected],
    ) -> ShardCheck:
        """Compare one shard file (None: there is none) with its seal and its records."""
        name = check.name
        if path is None:
            found = _Read(0, "", {}, None)
        elif name.endswith(".tar"):
            found = _read_tar(path, lambda n: self.advance(n, name))
        else:
            found = _read_parquet(path, lambda n: self.advance(n, name), sealed)
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
            reasons.append(_members_text(check))
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

    def _staged(self, shard: str, member: str, expected: _Expected) -> None:
        """An image of a shard not written yet: staged, as its record says."""
        self.report.staged += 1
        self.report.images += 1
        path = self.layout.state / STAGING / member
        problem = _file_problem(path, expected, lambda n: self.advance(n, member))
        if problem is not None:
            ref = JobRef(expected.key, expected.job_id, member)
            where = f"{self.layout.state.name}/{STAGING}/{member}"
            detail = f"{problem}; for shard {shard}, not written yet"
            self.report.problems.append(Problem(f"staged {_kind(problem)}", where, (ref,), detail))

    def _loose(self, path: str, expected: _Expected, scratch: Path | None, here: bool) -> None:
        self.report.images += 1
        ref = JobRef(expected.key, expected.job_id, path)
        local = inside(self.layout.root, path) if here else None
        if here and local is None:
            self.report.problems.append(
                Problem("not ours", path, (ref,), "its record names a file outside the folder")
            )
            return
        if local is not None:
            problem = _file_problem(local, expected, lambda n: self.advance(n, path))
        else:
            assert scratch is not None
            problem = self._remote_file_problem(path, expected, scratch)
        if problem is not None:
            self.report.problems.append(Problem(f"image {_kind(problem)}", path, (ref,), problem))

    def _remote_file_problem(self, path: str, expected: _Expected, scratch: Path) -> str | None:
        copy = scratch / "image"
        try:
            if not self.destination.fetch(path, copy):
                self.advance(expected.size, path)
                return "missing"
            return _file_problem(copy, expected, lambda n: self.advance(n, path))
        except OSError as exc:
            return f"missing: could not be downloaded ({exc})"
        finally:
            copy.unlink(missing_ok=True)


def _kind(problem: str) -> str:
    return "missing" if problem.startswith("missing") else "changed"


def _members_text(check: ShardCheck) -> str:
    parts = []
    if check.changed:
        parts.append(f"{_count(len(check.changed), 'member')} changed")
    if check.missing:
        parts.append(f"{_count(len(check.missing), 'member')} missing")
    return ", ".join(parts)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _key_of(member: str) -> str:
    """The job key of a member no record names: its stem, less an image number."""
    stem = member.rpartition(".")[0] or member
    return re.sub(r"-\d+$", "", stem)


# ---- reading files ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Read:
    size: int
    sha256: str
    members: dict[str, str | None]  # image member → its sha256 (None: not read)
    error: str | None  # why it could not be read to its end


class _HashingReader:
    """A file read once, start to end, hashed on the way (what tarfile's stream mode reads)."""

    def __init__(self, handle: IO[bytes], advance: Callable[[int], None]) -> None:
        self.handle = handle
        self.advance = advance
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        self.advance(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


_UNREADABLE = (OSError, EOFError, ValueError, tarfile.TarError, zlib.error)


def _read_tar(path: Path, advance: Callable[[int], None]) -> _Read:
    """One pass over a tar shard: the whole file's size and sha256, and each image member's
    sha256 up to where it stops making sense."""
    members: dict[str, str | None] = {}
    error = None
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the drain
    except OSError as exc:
        return _Read(0, "", {}, f"cannot open it: {exc.strerror or exc}")
    with handle:
        reader = _HashingReader(handle, advance)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    if not info.isfile() or info.name.endswith((".json", ".txt")):
                        continue
                    extracted = tar.extractfile(info)
                    if extracted is None:
                        continue
                    digest = hashlib.sha256()
                    while chunk := extracted.read(CHUNK):
                        digest.update(chunk)
                    members[info.name] = digest.hexdigest()
        except _UNREADABLE as exc:
            error = str(exc) or type(exc).__name__
        try:
            reader.drain()
        except OSError as exc:
            error = error or f"cannot read it: {exc.strerror or exc}"
    return _Read(reader.size, reader.digest.hexdigest(), members, error)


def _read_parquet(path: Path, advance: Callable[[int], None], sealed: Sealed | None) -> _Read:
    """A parquet shard's size and sha256; its members' names when it is as sealed, else each
    image member's sha256 (a second read, only for a shard that is not)."""
    try:
        size, sha256 = file_digest(path, advance)
    except OSError as exc:
        return _Read(0, "", {}, f"cannot read it: {exc.strerror or exc}")
    whole = sealed is not None and sealed.sha256 == sha256 and sealed.size == size
    members: dict[str, str | None] = {}
    error = None
    pq = arrow.parquet("verifying parquet shards")  # outside the try: missing is no damage
    try:
        column = "image.path" if whole else "image"
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=100):
            for image in batch.column(0).to_pylist():
                if not isinstance(image, dict) or not isinstance(image.get("path"), str):
                    continue
                data = image.get("bytes")
                if whole:
                    members[image["path"]] = None
                elif isinstance(data, bytes):
                    members[image["path"]] = hashlib.sha256(data).hexdigest()
    except Exception as exc:  # pyarrow's errors are many (ArrowInvalid, OSError, KeyError…)
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _Read(size, sha256, members, error)


def _file_problem(path: Path, expected: _Expected, advance: Callable[[int], None]) -> str | None:
    """Why a file is not the one recorded (None: it is)."""
    try:
        if path.is_symlink() or not path.is_file():
            advance(expected.size)
            return "missing" if not path.exists() else "missing: not a regular file"
        size, sha256 = file_digest(path, advance)
    except OSError as exc:
        return f"missing: cannot read it ({exc.strerror or exc})"
    if size != expected.size:
        return f"changed: {size:,} bytes where {expected.size:,} were recorded"
    if sha256 != expected.sha256:
        return "changed: its sha256 is not the one recorded"
    return None
