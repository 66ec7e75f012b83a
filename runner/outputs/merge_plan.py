"""A merge's plan file (.krea-batch/merge.json): which input file becomes which output shard,
written before any copy, so a merge cut short is finished by running it again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.outputs.atomic import write_atomic
from runner.outputs.identity import (
    parse_identity,
)
from runner.outputs.layout import (
    IDENTITY_NAME,
    STATE_DIR,
)
from runner.outputs.merge_inputs import (
    read_json,
)
from runner.outputs.trees import Tree, same_or_inside
from runner.state.records import ResultRecord


@dataclass(frozen=True, slots=True)
class Copy:
    source: int  # the input's position
    path: str  # in the input
    target: str  # in the merged folder
    size: int | None  # of a shard (loose files are checked by sha256)
    sha256: str | None = None


def plan_digest(names: list[str], records: list[ResultRecord], copies: list[Copy]) -> str:
    """What the merge makes, in one hash: the same inputs holding the same gives the same."""
    digest = hashlib.sha256(json.dumps(names).encode())
    for record in records:
        files = [entry.to_json() for entry in record.files]
        digest.update(json.dumps([record.key, record.status, files]).encode())
    for copy in copies:
        digest.update(json.dumps([copy.source, copy.path, copy.target, copy.size]).encode())
    return digest.hexdigest()


def read_plan(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_plan(
    path: Path, names: list[str], digest: str, shards: dict[str, list[Any]], *, done: bool
) -> None:
    plan = {"merged_from": names, "digest": digest, "shards": shards, "done": done}
    write_atomic(path, json.dumps(plan, indent=1, ensure_ascii=False) + "\n")


def refuse_foreign(tree: Tree, names: list[str], plan: dict[str, Any]) -> None:
    """An output that holds anything must be a merge of these very folders (begun or done)."""
    held = tree.names() - {STATE_DIR}
    if not held or same_inputs(plan.get("merged_from"), names):
        return
    identity = parse_identity(read_json(tree, IDENTITY_NAME))
    if identity is not None and same_inputs(list(identity.merged_from), names):
        return
    raise UsageError(
        f"--out {tree} already holds files and is no merge of these folders: "
        "merge into a new folder"
    )


def same_inputs(earlier: Any, names: list[str]) -> bool:
    """The same inputs, in the same order (a path however spelt: ``./a`` is ``a``)."""
    if not isinstance(earlier, list) or len(earlier) != len(names):
        return False
    return all(
        same_or_inside(str(a), b) and same_or_inside(b, str(a))
        for a, b in zip(earlier, names, strict=True)
    )
