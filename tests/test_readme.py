"""The README and docs/ as a newcomer reads them: every YAML block plans, every krea-batch
command line parses, every flag is in the table, and the first-run walk-through runs as
written, on the emulator (one run, shared by the tests that read what it made)."""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.cli.parser import build_parser
from runner.manifest import parse_manifest
from runner.manifest.plan import make_plan
from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(path: Path, *kinds: str) -> list[str]:
    return [body for kind, body in FENCE.findall(path.read_text()) if kind in kinds]


def _yaml_blocks() -> list[tuple[str, str]]:
    return [(p.name, b) for p in DOCS for b in _blocks(p, "yaml")]


def _command_lines() -> list[tuple[str, str]]:
    """Each krea-batch command of a shell, cron or unit-file block: (where, command line)."""
    found = []
    for path in DOCS:
        for block in _blocks(path, "sh", "cron", "ini"):
            for line in block.splitlines():
                words = shlex.split(line, comments=True) if "krea-batch" in line else []
                starts = [i for i, w in enumerate(words) if w.endswith("krea-batch")]
                if not starts or "=" in words[starts[0]]:
                    continue
                command = words[starts[0] + 1 :]
                ends = [
                    i for i, w in enumerate(command) if w in (">>", ">", "2>&1", "|", "&&", "&")
                ]
                found.append((path.name, command[: ends[0]] if ends else command))
    return [(where, shlex.join(words)) for where, words in found]


def test_the_readme_stays_under_20_kb() -> None:
    assert len(README.read_bytes()) < 20_000, "keep depth in docs/"


@pytest.mark.parametrize(("where", "text"), _yaml_blocks())
def test_every_yaml_block_passes_plan(where: str, text: str) -> None:
    """As saved at the top of a clone, where its prompts files are (examples/…)."""
    plan = make_plan(parse_manifest(text, file=where, base_dir=ROOT))
    assert plan.jobs > 0


def test_the_readme_has_yaml_blocks_and_command_lines() -> None:
    assert _yaml_blocks()
    assert len([w for w, _ in _command_lines() if w == "README.md"]) >= 3


@pytest.mark.parametrize(("where", "line"), _command_lines())
def test_every_krea_batch_command_line_parses(where: str, line: str) -> None:
    build_parser().parse_args(shlex.split(line))  # a flag renamed since: exit 2, test fails


def test_every_flag_of_run_is_in_the_readmes_table() -> None:
    table = README.read_text().split("## Flags", 1)[1].split("\n## ", 1)[0]
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {f for a in run._actions for f in a.option_strings if f.startswith("--")}
    missing = sorted(f for f in flags - {"--help"} if f"`{f}" not in table)
    assert not missing, f"flags missing from the README's table: {missing}"


def test_installs_named_in_the_docs_exist() -> None:
    """krea-batch is not on an index: extras are installed from a clone ('.[s3]')."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for path in DOCS:
        text = path.read_text()
        assert "pip install 'krea-batch[" not in text, path.name
        for extra in re.findall(r"pip install '\.\[(\w+)\]'", text):
            assert extra in extras, f"{path.name}: no extra {extra!r}"


def test_serve_says_its_token_file_holds_one_account_a_line() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    [action] = [a for a in serve._actions if "--token-file" in a.option_strings]
    assert "one a line, each an account of its own" in str(action.help)


# ---- the first-run walk-through, on the emulator ---------------------------------------------

SHIMS = {
    # The README's commands as written; `run` goes to the emulator below, and polls it often
    # (the manifest's 2 s would only make the test slow).
    "krea-batch": '#!/bin/sh\nif [ "$1" = run ]; then set -- "$@" --api-base "$WALK_API" '
    '--poll-interval 0.05; fi\nexec "$WALK_PYTHON" -m runner "$@"\n',
    # No network in CI: these two say what they were asked, and the tests check it.
    "pip": '#!/bin/sh\necho "$@" > "$WALK_LOG/pip"\n',
    "hf": '#!/bin/sh\nprintf "%s\\n" "$@" > "$WALK_LOG/hf"\n',
}


@dataclass
class Walk:
    folder: Path
    code: int
    output: str
    log: Path


def _walk_through() -> str:
    section = README.read_text().split("## A first real run", 1)[1].split("\n## ", 1)[0]
    [block] = [body for kind, body in FENCE.findall(section) if kind == "sh"]
    return block


@contextlib.contextmanager
def _emulator() -> Iterator[str]:
    """`krea-batch serve` on a free port, quick jobs; its address."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", "--port", "0", "--latency", "fixed:0.05"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert serve.stderr is not None
    try:
        for line in serve.stderr:
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                yield found.group(1)
                return
        pytest.fail("the emulator did not start")
    finally:
        serve.terminate()
        serve.wait(10)
        serve.stderr.close()


def _walk(folder: Path) -> tuple[int, str]:
    """The walk-through's block, run by bash in ``folder`` with the shims on PATH."""
    shutil.copy(ROOT / "jobs.example.yaml", folder)
    shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("*s"))
    shims, log = folder / ".shims", folder / ".log"
    shims.mkdir()
    log.mkdir()
    for name, text in SHIMS.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    with _emulator() as url:
        env = {
            **os.environ,
            "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "WALK_API": url,
            "WALK_PYTHON": sys.executable,
            "WALK_LOG": str(log),
            "HF_HOME": str(folder / ".hf"),
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("KREA_API_TOKEN", None)
        done = subprocess.run(
            ["bash", "-euc", _walk_through()],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Walk:
    """One walk-through for the whole session: xdist's workers share its folder, the first
    to take the lock runs it, the others read what it left."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    folder, result = root / "readme-walk", root / "readme-walk.json"
    with (root / "readme-walk.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            folder.mkdir()
            code, output = _walk(folder)
            result.write_text(json.dumps({"code": code, "output": output}))
        data = json.loads(result.read_text())
    return Walk(folder, data["code"], data["output"], folder / ".log")


def test_the_first_run_walk_through_runs_as_written(walk: Walk) -> None:
    assert walk.code == 0, walk.output
    assert "jobs.yaml: 25 jobs" in walk.output  # plan
    assert "25 completed, 0 failed" in walk.output  # run, then status
    assert "num_rows: 25" in walk.output  # load_dataset


def test_the_walk_throughs_installs_and_upload_are_what_they_should_be(walk: Walk) -> None:
    assert (walk.log / "pip").read_text().split() == ["install", ".[dataset]"]
    args = (walk.log / "hf").read_text().splitlines()
    assert args[:3] == ["upload", "you/my-images", "out"]
    assert args[args.index("--repo-type") + 1] == "dataset"
    excluded = [args[i + 1] for i, a in enumerate(args) if a == "--exclude"]
    out = walk.folder / "out"
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    sent = {f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in excluded)}
    assert not {f for f in sent if f.startswith(".krea-batch/") or f == "status.json"}
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert {"README.md", "metadata.jsonl", *(row["file_name"] for row in rows)} <= sent


def test_the_docs_name_every_file_and_field_of_the_folder(walk: Walk) -> None:
    """docs/running.md's listing of a files-format folder, against one a run made."""
    listing = (ROOT / "docs" / "running.md").read_text().split("## The output folder", 1)[1]
    listing = listing.split("```", 2)[1]
    out = walk.folder / "out"
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    row = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    fields = set(record) | {k if not k.startswith("var_") else "var_NAME" for k in row}
    assert not sorted(f for f in fields if not re.search(rf"\b{f}\b", listing))
    assert "images/0000/KEY.png" in listing
    assert record["files"][0]["path"].startswith("images/0000/")
    names = {p.name for p in out.iterdir()} - {"images"}
    assert not sorted(n for n in names if n not in listing), "a file the docs do not name"


def test_the_terminal_transcript_is_what_make_run_shows_now() -> None:
    """docs/terminal-make-run.txt: no line per job without -v, ISO times, a bar per model of
    jobs.example.yaml with its count, and the closing line for all of them."""
    shown = (ROOT / "docs" / "terminal-make-run.txt").read_text().splitlines()
    plan = make_plan(parse_manifest((ROOT / "jobs.example.yaml").read_text(), base_dir=ROOT))
    assert not [line for line in shown if "← done" in line or "→ submitted" in line]
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] INFO", shown[0]), shown[0]
    for model in plan.models:
        [bar] = [line for line in shown if line.startswith(model.model + " ")]
        assert f"{model.jobs}/{model.jobs}" in bar
    assert f"{plan.jobs} completed, 0 failed" in "\n".join(shown)


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_leads_somewhere() -> None:
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            page = (path.parent / file).resolve() if file else path
            assert page.exists(), f"{path.name}: {target}"
            if anchor and page.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{path.name}: {target}"
