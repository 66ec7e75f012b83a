"""Shared fixtures: the catalog, a place to write manifests, and the published spec."""

from __future__ import annotations

import json
from collections.abc import Callable
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
