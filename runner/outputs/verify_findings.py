"""What ``krea-batch verify`` finds: each shard's check, each problem, the report (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.outputs.shard_files import SHARDS_DIR

MAX_SHOWN = 5  # jobs named per finding in the text; the JSON names them all


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


def kind_of(problem: str) -> str:
    """``missing`` or ``changed``: what a file problem says of the file."""
    return "missing" if problem.startswith("missing") else "changed"


def members_text(check: ShardCheck) -> str:
    """``2 members changed, 1 member missing``."""
    parts = []
    if check.changed:
        parts.append(f"{counted(len(check.changed), 'member')} changed")
    if check.missing:
        parts.append(f"{counted(len(check.missing), 'member')} missing")
    return ", ".join(parts)


def counted(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")
