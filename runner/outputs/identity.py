"""OUT/krea-batch.json: what an output folder is, so a run never mixes two datasets in it.

It names the folder's format, the API it was made against (``emulator`` for the built-in
emulator or any server on this machine, else the API base), the manifests it came from (file
name and sha256 of its text), the shard of a split it holds (``[index, count]``, the index
counting from 1: a scheduler's task T is shard T+1) and, for a merged folder, what it was
merged from. It is written on a folder's first run, checked by every later one (a run of
another split is refused before anything is sent), put at a remote destination with the run's
other files, read by ``--shard auto`` for a count the scheduler cannot know (a task rerun
alone), and read by ``merge`` to tell a whole round of one split from a mix or a part.

Pure but for ``read_identity``, ``recorded_shard`` and ``write_identity``.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.outputs.atomic import write_atomic
from runner.outputs.layout import IDENTITY_NAME, SUMMARY_NAME
from runner.outputs.summary import read_summary
from runner.outputs.trees import Tree
from runner.sharding import shard_words

EMULATOR = "emulator"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True, slots=True)
class ManifestId:
    """One manifest a folder holds the jobs of."""

    name: str  # the file's name, without its folder
    sha256: str  # of the file's bytes ("" when it came as an object, not a file)

    def same(self, other: ManifestId) -> bool:
        """The same manifest: the same text, or the same file name (an edited manifest still
        resumes its folder: editing an entry changes only that entry's jobs)."""
        return (bool(self.sha256) and self.sha256 == other.sha256) or self.name == other.name


@dataclass(frozen=True, slots=True)
class FolderIdentity:
    format: str
    api: str
    manifests: tuple[ManifestId, ...] = ()
    shard: tuple[int, int] | None = None  # (index, count), 1-based
    merged_from: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["manifests"] = [asdict(m) for m in self.manifests]
        data["shard"] = list(self.shard) if self.shard else None
        data["merged_from"] = list(self.merged_from)
        return data

    def holds(self, manifest: ManifestId) -> bool:
        return any(known.same(manifest) for known in self.manifests)

    def with_manifest(self, manifest: ManifestId) -> FolderIdentity:
        """The identity once ``manifest`` is appended (a deliberate second manifest)."""
        if self.holds(manifest):
            return self
        return replace(self, manifests=(*self.manifests, manifest))


def api_identity(api_base: str) -> str:
    """``emulator`` for a server on this machine (the built-in emulator listens on a new port
    each time), else the API base without a trailing slash."""
    host = urllib.parse.urlsplit(api_base).hostname or ""
    return EMULATOR if host in _LOCAL_HOSTS or host.startswith("127.") else api_base.rstrip("/")


def manifest_id(file: str, text: bytes | None) -> ManifestId:
    digest = hashlib.sha256(text).hexdigest() if text is not None else ""
    return ManifestId(Path(file).name, digest)


def manifest_id_of(file: str) -> ManifestId:
    """The identity of the manifest at ``file`` (unreadable or not a file: by name alone)."""
    try:
        return manifest_id(file, Path(file).read_bytes())
    except OSError:
        return manifest_id(file, None)


def parse_identity(data: Any) -> FolderIdentity | None:
    """An identity from its JSON (None: not one of ours)."""
    if not isinstance(data, dict):
        return None
    format, api = data.get("format"), data.get("api")
    if not isinstance(format, str) or not isinstance(api, str):
        return None
    manifests = tuple(
        ManifestId(str(m.get("name", "")), str(m.get("sha256", "")))
        for m in data.get("manifests") or []
        if isinstance(m, dict)
    )
    shard = data.get("shard")
    pair: tuple[int, int] | None = None
    numbers = shard if isinstance(shard, list) else []
    if len(numbers) == 2 and all(type(n) is int for n in numbers):
        pair = (numbers[0], numbers[1])
    merged = data.get("merged_from") or []
    return FolderIdentity(
        format=format,
        api=api,
        manifests=manifests,
        shard=pair,
        merged_from=tuple(str(m) for m in merged) if isinstance(merged, list) else (),
    )


def read_identity(path: Path) -> FolderIdentity | None:
    """The identity kept at ``path`` (None: none, or unreadable)."""
    try:
        return parse_identity(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def recorded_shard(out: str, state_dir: str | None = None) -> tuple[int, int] | None:
    """The split the output folder ``out`` records (None: none yet, or unreadable): in the
    state folder of a run made here, else at ``out`` itself."""
    tree = Tree(out, state_dir)
    identity = read_identity(tree.state / IDENTITY_NAME)
    if identity is None and tree.remote is not None:
        try:
            identity = parse_identity(json.loads(tree.read_bytes(IDENTITY_NAME) or b"null"))
        except (OSError, ValueError):
            identity = None
    return identity.shard if identity is not None else None


def write_identity(path: Path, identity: FolderIdentity) -> None:
    write_atomic(path, json.dumps(identity.to_json(), indent=1, ensure_ascii=False) + "\n")


def mismatch(held: FolderIdentity, wanted: FolderIdentity, *, append: bool = False) -> str | None:
    """Why a run described by ``wanted`` may not write into a folder that is ``held``, with
    the way out (None: it may). Pure; the caller puts the folder's name first."""
    elsewhere = "choose another --out for this run (a folder holds one dataset)"
    if held.api != wanted.api:
        return (
            f"was made against {_api_words(held.api)}, and this run is against "
            f"{_api_words(wanted.api)}: {elsewhere}"
        )
    if held.shard != wanted.shard:
        shards = f"holds {_shard_words(held.shard)}, and this run is {_shard_words(wanted.shard)}"
        if held.shard is None or wanted.shard is None:
            return f"{shards}: {elsewhere}"
        index, count = held.shard
        return (
            f"{shards}: nothing was sent. To go on with the split it holds, run it as "
            f"--shard auto/{count} (or --shard {index}/{count}); for another split, {elsewhere}"
        )
    if not append:
        for manifest in wanted.manifests:
            if held.manifests and not held.holds(manifest):
                names = ", ".join(m.name for m in held.manifests)
                return (
                    f"holds the jobs of {names}, not of {manifest.name}: {elsewhere}, or add "
                    "--append to add this manifest's jobs to it on purpose"
                )
    return None


def _api_words(api: str) -> str:
    return "the built-in emulator" if api == EMULATOR else api


def _shard_words(shard: tuple[int, int] | None) -> str:
    return "the whole manifest" if shard is None else shard_words(shard)


def claim_identity(root: Path, wanted: FolderIdentity, shown: str, *, append: bool = False) -> None:
    """Refuse a run that does not fit the folder at ``root`` (shown as ``shown``), before
    anything is sent; note the folder's identity on its first run (or a manifest appended)."""
    path = root / IDENTITY_NAME
    held = read_identity(path) or _from_summary(root, wanted)
    if held is not None:
        reason = mismatch(held, wanted, append=append)
        if reason is not None:
            raise UsageError(f"{shown} {reason}")
        updated = held
        for manifest in wanted.manifests:
            updated = updated.with_manifest(manifest)
        if updated == held and path.is_file():
            return
        wanted = updated
    write_identity(path, wanted)


def _from_summary(root: Path, wanted: FolderIdentity) -> FolderIdentity | None:
    """A folder from before identities: what its summary.json says (None: nothing)."""
    summary = read_summary(root / SUMMARY_NAME)
    api_base, manifest = summary.get("api_base"), summary.get("manifest")
    if not isinstance(api_base, str):
        return None
    manifests = (manifest_id(manifest, None),) if isinstance(manifest, str) else ()
    return FolderIdentity(wanted.format, api_identity(api_base), manifests, shard=wanted.shard)
