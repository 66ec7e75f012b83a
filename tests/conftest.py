"""Shared fixtures: the catalog, a place to write manifests, and the published spec."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.catalog import Catalog, load_catalog

ROOT = Path(__file__).resolve().parent.parent
# Krea's published OpenAPI spec (an older copy, the one runner/catalog.json was generated from),
# kept in the project so that no test depends on anything beside it.
SPEC_PATH = ROOT / "tests" / "data" / "krea-openapi.json"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def openapi_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return spec


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "jobs.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server, one per test worker, for the coordinator's tests."""
    from tests.redis_helpers import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture
def redis_url(redis_session: str) -> str:
    """The worker's redis-server, emptied for the test."""
    import redis

    with redis.Redis.from_url(redis_session) as client:
        client.flushall()
    return redis_session
