"""Where a run's output ends up: the local folder itself, or any fsspec URL (``s3://``,
``gs://``, ``hf://``, ``file://``…) that whole files are uploaded to.

Object stores have no append and no rename, so nothing is ever written there piecemeal: the
run works in a local state folder (journal, staging, shards being made) and puts each file
there whole once it is final. Credentials and endpoints come from each backend's usual places
(for S3 the AWS variables, ``AWS_ENDPOINT_URL`` included).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.errors import DestinationError, UsageError

log = logging.getLogger(__name__)


def is_url(out: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", out) is not None


def default_state_dir(url: str) -> Path:
    """``$XDG_STATE_HOME/krea-batch/<readable part>-<hash>``: one state folder per destination."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[1]).strip("_")[:60]
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return base / "krea-batch" / f"{readable}-{digest}"


class Destination:
    """A local folder: files are already where they belong."""

    remote = False
    url = ""

    def check(self) -> None:
        """Before anything is sent: a UsageError if the destination cannot be written to."""

    def put(self, local: Path, relative: str) -> None:
        """Make ``local`` the destination's ``relative`` (whole)."""

    def listing(self, relative_dir: str) -> set[str]:
        """The names of the files in the destination's ``relative_dir``."""
        return set()

    def fetch(self, relative: str, local: Path) -> bool:
        """Copy the destination's ``relative`` to ``local``; False when it has none."""
        return False

    def sizes(self, relative_dir: str) -> dict[str, int]:
        """The sizes of the files in the destination's ``relative_dir``, by name."""
        return {}

    def remove(self, relative: str) -> None:
        """Delete the destination's ``relative`` (gone already: nothing to do)."""


class RemoteDestination(Destination):
    """An fsspec URL (see the module docstring)."""

    remote = True

    def __init__(self, url: str) -> None:
        try:
            import fsspec
            from fsspec.core import url_to_fs
        except ImportError as exc:  # pragma: no cover - fsspec is a dependency
            raise UsageError("--out URL needs fsspec: pip install fsspec") from exc
        try:
            self.fs, self.root = url_to_fs(url)
        except (ImportError, ValueError) as exc:
            scheme = url.split("://", 1)[0]
            known = fsspec.available_protocols()
            hint = f" (pip install krea-batch[{scheme}])" if scheme in ("s3", "gs") else ""
            if scheme not in known:
                raise UsageError(f"--out {url}: no filesystem for {scheme}://") from exc
            raise UsageError(f"--out {url}: {exc}{hint}") from exc
        self.url = url.rstrip("/")
        self.root = self.root.rstrip("/")

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def check(self) -> None:
        """Something must already hold the destination (a bucket, a folder): a missing bucket
        or no credentials are a usage error before anything is paid for."""
        probe = self.root
        try:
            while probe and not self.fs.exists(probe):
                probe = probe.rpartition("/")[0]
        except Exception as exc:  # each backend has its own errors: no credentials, no network
            raise UsageError(f"--out {self.url}: cannot reach it ({exc})") from exc
        if not probe:
            raise UsageError(f"--out {self.url}: nothing there to write into (no such bucket?)")

    # Seconds between tries of a put: an endpoint gone for 15 s is a blip, not a stopped run.
    retry_pauses: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    def put(self, local: Path, relative: str) -> None:
        """Put a file (from a worker thread: it may wait between tries); the last try's
        error is raised."""
        for pause in (*self.retry_pauses, None):
            try:
                self._put_once(local, relative)
                return
            except DestinationError as exc:
                if pause is None:
                    raise
                log.warning("%s; trying again in %g s", exc, pause)
                time.sleep(pause)

    def _put_once(self, local: Path, relative: str) -> None:
        target = self._path(relative)
        with _as_os_error(self.url):
            if "file" in self.fs.protocol:  # a file system with folders (object stores have none)
                self.fs.makedirs(target.rpartition("/")[0], exist_ok=True)
            self.fs.put_file(str(local), target)

    def listing(self, relative_dir: str) -> set[str]:
        path = self._path(relative_dir)
        with _as_os_error(self.url):
            self.fs.invalidate_cache(path)
            try:
                entries: list[Any] = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return set()
        return {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries}

    def sizes(self, relative_dir: str) -> dict[str, int]:
        path = self._path(relative_dir)
        with _as_os_error(self.url):
            self.fs.invalidate_cache(path)
            try:
                entries: list[Any] = self.fs.ls(path, detail=True)
            except FileNotFoundError:
                return {}
        return {
            str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
            for entry in entries
            if entry.get("type") != "directory"
        }

    def remove(self, relative: str) -> None:
        with _as_os_error(self.url), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(relative))

    def fetch(self, relative: str, local: Path) -> bool:
        with _as_os_error(self.url):
            try:
                self.fs.get_file(self._path(relative), str(local))
            except FileNotFoundError:
                return False
        return True


@contextlib.contextmanager
def _as_os_error(url: str) -> Iterator[None]:
    """A backend's own error (botocore's, say) as an OSError, which the run handles as it does
    a failing disk: the journal keeps every outcome, and the next run puts what is missing."""
    try:
        yield
    except Exception as exc:  # s3fs says FileNotFoundError for a bucket deleted mid-run
        raise DestinationError(url, _cause(exc)) from exc


def _cause(exc: BaseException) -> str:
    """A backend's error in a line: its class (NoSuchBucket, ENOENT…) and its message."""
    code = errno.errorcode.get(exc.errno or 0) if isinstance(exc, OSError) else None
    name = code or type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}" if text and name not in text else text or name


def destination_for(out: str) -> Destination:
    return RemoteDestination(out) if is_url(out) else Destination()
