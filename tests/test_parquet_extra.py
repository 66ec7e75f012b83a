"""pyarrow is an extra: without it, --format parquet is a usage error that says how to install
it, before anything is sent or made."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.cli import main
from tests.conftest import ROOT


@pytest.fixture
def without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "pyarrow" or name.startswith("pyarrow."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)


@pytest.mark.usefixtures("without_pyarrow")
def test_plan_with_parquet_and_no_pyarrow_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", str(ROOT / "jobs.example.yaml"), "--format", "parquet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "krea-batch: error: --format parquet needs pyarrow, which is not installed"
    )
    assert "pip install '.[parquet]'" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("without_pyarrow")
def test_run_with_parquet_and_no_pyarrow_stops_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["run", str(ROOT / "jobs.example.yaml"), "--emulator", "--out", str(out)]
    assert main([*argv, "--format", "parquet"]) == 2
    assert "--format parquet needs pyarrow" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("without_pyarrow")
def test_the_other_formats_need_no_pyarrow(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(ROOT / "jobs.example.yaml"), "--format", "webdataset"]) == 0


def test_pyarrow_is_not_a_dependency_of_a_default_install() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("pyarrow") for dep in project["dependencies"])
    assert project["optional-dependencies"]["parquet"] == ["pyarrow>=15"]
    assert "krea-batch[parquet]" in project["optional-dependencies"]["dev"]
