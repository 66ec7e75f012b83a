"""An output folder to read or write whole files in, wherever it is: a local folder or an fsspec
URL (``s3://bucket/prefix``). What ``merge``, ``status`` and ``report`` need of a folder they did
not make, in one shape: read a small file, list a folder, open a shard, copy a file across.

Files are put whole: locally under a hidden name renamed into place (a crash leaves the old
file or none), at a URL as one upload (object stores have no partial objects).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from runner.errors import UsageError
from runner.files import read_regular
from runner.outputs.atomic import fsync_dir
from runner.outputs.destination import RemoteDestination, _as_os_error, default_state_dir, is_url
from runner.outputs.layout import Layout

MAX_SMALL_FILE = 64 << 20  # summary.json, krea-batch.json: far smaller than this


class Tree:
    """A folder named by a path or a URL (see the module docstring)."""

    def __init__(self, where: str, state_dir: str | Path | None = None) -> None:
        self.where = where.rstrip("/") or where
        self.remote: RemoteDestination | None = None
        self.local: Path | None = None
        if is_url(where):
            self.remote = RemoteDestination(where)
            self.where = self.remote.url
            # A run's local state for this URL (its journal, lock and results), where it is.
            self.state = Path(state_dir) if state_dir else default_state_dir(self.where)
        else:
            self.local = Path(where)
            self.state = Path(state_dir) if state_dir else self.local

    def __str__(self) -> str:
        return self.where

    def _path(self, relative: str) -> str:
        assert self.remote is not None
        return f"{self.remote.root}/{relative}" if relative else self.remote.root

    # ---- reading --------------------------------------------------------------------------

    def exists(self) -> bool:
        if self.local is not None:
            return self.local.is_dir()
        assert self.remote is not None
        with _as_os_error(self.where):
            return bool(self.remote.fs.isdir(self.remote.root))

    def read_bytes(self, relative: str, limit: int = MAX_SMALL_FILE) -> bytes | None:
        """A small file's bytes (None: there is none)."""
        if self.local is not None:
            try:
                return read_regular(self.local / relative, limit)
            except FileNotFoundError:
                return None
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "file"
            if not self.fetch(relative, target):
                return None
            return read_regular(target, limit)

    def fetch(self, relative: str, local: Path) -> bool:
        """Copy the folder's ``relative`` to the local file ``local``; False when it has none."""
        if self.local is not None:
            try:
                shutil.copyfile(self.local / relative, local)
            except FileNotFoundError:
                return False
            return True
        assert self.remote is not None
        return self.remote.fetch(relative, local)

    def names(self, relative_dir: str = "") -> set[str]:
        """The names in ``relative_dir`` (none: an empty set)."""
        if self.local is not None:
            try:
                return {p.name for p in (self.local / relative_dir).iterdir()}
            except (FileNotFoundError, NotADirectoryError):
                return set()
        assert self.remote is not None
        return self.remote.listing(relative_dir)

    def size(self, relative: str) -> int | None:
        if self.local is not None:
            try:
                return (self.local / relative).stat().st_size
            except OSError:
                return None
        assert self.remote is not None
        with _as_os_error(self.where):
            try:
                return int(self.remote.fs.size(self._path(relative)))
            except FileNotFoundError:
                return None

    @contextlib.contextmanager
    def open(self, relative: str) -> Iterator[IO[bytes]]:
        """A file opened for reading (a remote one is read in ranges as it is sought)."""
        if self.local is not None:
            with open(self.local / relative, "rb") as handle:
                yield handle
            return
        assert self.remote is not None
        with _as_os_error(self.where):
            remote: Any = self.remote.fs.open(self._path(relative), "rb")
        with remote:
            yield remote

    def lock_holder(self) -> str | None:
        """Who holds the folder's lock (a run live right now), or None. A URL's lock is in the
        state folder of a run on this machine."""
        return lock_holder(Layout(self.state).lock)

    # ---- writing --------------------------------------------------------------------------

    def put(self, local: Path, relative: str) -> None:
        """Make ``local`` the folder's ``relative``, whole."""
        if self.local is not None:
            target = self.local / relative
            if target.resolve() == local.resolve():
                return
            _replace_with(target, lambda hidden: shutil.copyfile(local, hidden))
            return
        assert self.remote is not None
        self.remote.put(local, relative)

    def copy_from(self, source: Tree, relative: str, target: str) -> None:
        """Copy ``source``'s file ``relative`` to this folder's ``target``, whole (a hard link
        where both are on one local disk: nothing is re-encoded or even read)."""
        if self.local is not None:
            final = self.local / target
            if source.local is not None:
                _replace_with(final, lambda hidden: _link_or_copy(source.local / relative, hidden))
            else:
                _replace_with(final, lambda hidden: _fetched(source, relative, hidden))
            return
        assert self.remote is not None
        if source.local is not None:
            self.remote.put(source.local / relative, target)
        elif source.remote is not None and source.remote.fs.protocol == self.remote.fs.protocol:
            with _as_os_error(self.where):
                self.remote.fs.copy(source._path(relative), self._path(target))
        else:
            with tempfile.TemporaryDirectory() as scratch:
                hop = Path(scratch) / "file"
                _fetched(source, relative, hop)
                self.remote.put(hop, target)

    def remove(self, relative: str) -> None:
        if self.local is not None:
            (self.local / relative).unlink(missing_ok=True)
            return
        assert self.remote is not None
        with _as_os_error(self.where), contextlib.suppress(FileNotFoundError):
            self.remote.fs.rm(self._path(relative))


def _fetched(source: Tree, relative: str, local: Path) -> None:
    if not source.fetch(relative, local):
        raise FileNotFoundError(f"{source}/{relative}")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same disk: no copy needed (shards are never changed in place)
    except OSError:
        shutil.copyfile(source, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())


def _replace_with(final: Path, make: Any) -> None:
    """Make ``final`` by ``make(hidden)`` then a rename: never half a file under its name."""
    final.parent.mkdir(parents=True, exist_ok=True)
    hidden = final.with_name(f".{final.name}.part")
    hidden.unlink(missing_ok=True)
    try:
        make(hidden)
        os.replace(hidden, final)
    except BaseException:
        hidden.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def lock_holder(lock: Path) -> str | None:
    """Who holds ``lock`` (a run's flock), or None: it is tried without waiting and let go."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read(200).strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def same_or_inside(inner: str, outer: str) -> bool:
    """Whether the folder ``inner`` is ``outer`` or inside it (paths resolved; URLs compared
    as written, without a trailing slash). A path and a URL are never one another."""
    if is_url(inner) != is_url(outer):
        return False
    if is_url(inner):
        a, b = inner.rstrip("/"), outer.rstrip("/")
        return a == b or a.startswith(b + "/")
    return Path(inner).resolve().is_relative_to(Path(outer).resolve())


def safe_relative(path: str) -> bool:
    """A path a results record may name: relative, inside its folder, no ``..``."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in path


def as_usage(where: str, exc: Exception) -> UsageError:
    return UsageError(f"{where}: {exc}")
