"""Job specs: one request to send, with the stable key that identifies it across runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict

KEY_LENGTH = 16  # hex digits: 64 bits, so a million jobs collide with odds of about 1 in 30 million


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_key(endpoint: str, body: Mapping[str, Any], replica: int) -> str:
    """A short hash of what is sent; the same request and replica always get the same key."""
    text = canonical_json({"endpoint": endpoint, "body": body, "replica": replica})
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Whether a job belongs to shard I of N: by its key, so the split never depends on order."""
    index, count = shard
    return shard_of(key, count) == index


def shard_of(key: str, count: int) -> int:
    """The shard (counting from 1) a job belongs to in a split of ``count``."""
    return int(key, 16) % count + 1


def derive_seed(key: str) -> int:
    """The seed of ``seed: auto``: 32 bits taken from a key, so it is stable across runs."""
    return int(key[:8], 16)


class JobDescription(TypedDict):
    """A spec as plain JSON data (what every results record starts with)."""

    key: str
    index: int
    entry: int
    name: str | None
    model: str
    endpoint: str
    prompt: str
    seed: int | None
    params: dict[str, Any]
    vars: dict[str, Any]
    replica: int


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to run: the request (endpoint and body) and what the manifest said about it."""

    key: str
    index: int  # position in the expansion, for names like {index:05d}
    entry: int  # which item of `jobs:` it came from
    name: str | None
    model: str  # catalog id
    endpoint: str
    body: Mapping[str, Any]
    replica: int
    seed: int | None
    vars: Mapping[str, Any]
    units: float | None  # estimated compute units; None when the price is not published
    usd: float | None = None  # estimated US dollars, where Krea publishes a USD price

    @property
    def prompt(self) -> str:
        return str(self.body["prompt"])

    def at(self, index: int) -> JobSpec:
        return replace(self, index=index)

    def describe(self) -> JobDescription:
        """The spec as plain JSON data: what `plan --show` prints, and each record starts with."""
        return {
            "key": self.key,
            "index": self.index,
            "entry": self.entry,
            "name": self.name,
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "seed": self.seed,
            "params": {k: v for k, v in self.body.items() if k != "prompt"},
            "vars": dict(self.vars),
            "replica": self.replica,
        }
