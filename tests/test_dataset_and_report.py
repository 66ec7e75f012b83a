"""Dataset output (metadata.jsonl, file-name templates) and the HTML gallery."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runner.batch import run_batch
from runner.cli import main
from runner.emulator import EmulatorConfig, Latency
from runner.errors import UsageError
from runner.jobspec import JobSpec
from runner.manifest import expand, parse_manifest
from runner.naming import check_template, render_name
from runner.outputs import ResultRecord
from runner.outputs.card import dataset_card, write_card
from runner.outputs.report import write_report
from tests.engine_helpers import (
    FAST,
    as_records,
    read_results,
    small_manifest,
    write_ambiguous_journal,
)
from tests.in_process import in_process

MATRIX = textwrap.dedent("""
    version: 1
    jobs:
      - name: "{animal}"
        prompt: a {animal}, studio photo
        vars: {animal: [fox, owl]}
        models: [seedream-4, imagen-4-fast]
        model_params:
          seedream-4: {width: 256, height: 192}
          imagen-4-fast: {width: 512, height: 512}
        seeds: [1, 2]
      - prompt: "../../etc/passwd {x}"
        vars: {x: [a]}
        model: seedream-4
        params: {width: 128, height: 128}
    run: {poll_interval: 0.02, rate_limit: 1000, concurrency: 8}
""")


async def run_matrix(out: Path, template: str | None = None, **knobs: Any) -> None:
    manifest = parse_manifest(MATRIX, overrides={"name_template": template})
    config = EmulatorConfig(latency=Latency.parse("fixed:0.05"), **knobs)
    async with in_process(config) as emu:
        await run_batch(manifest, out, **emu.via, token="t", options=FAST)


def spec(**fields: Any) -> JobSpec:
    base = {
        "key": "0123456789abcdef",
        "index": 7,
        "entry": 0,
        "name": None,
        "model": "flux-1-dev",
        "endpoint": "/x",
        "body": {"prompt": "p"},
        "replica": 0,
        "seed": 3,
        "vars": {},
        "units": 3.0,
    }
    return JobSpec(**{**base, **fields})


@pytest.mark.parametrize(
    ("template", "fields", "name"),
    [
        ("{model}/{key}", {}, "flux-1-dev/0123456789abcdef"),
        ("{name}/{index:05d}.png", {"name": "fox"}, "fox/00007"),
        ("{prompt}-{seed}", {"body": {"prompt": "../../etc/passwd"}}, "etc-passwd-3"),
        ("{name}/{key}", {"name": "../../.."}, "_/0123456789abcdef"),
        ("{name}/{key}", {"name": "/abs\\path\x00"}, "abs-path/0123456789abcdef"),
    ],
)
def test_names_never_leave_the_images_folder(
    template: str, fields: dict[str, Any], name: str
) -> None:
    assert render_name(check_template(template), spec(**fields)) == name


@pytest.mark.parametrize("template", ["../{key}", "/{key}", "{colour}", "plain", "{key"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(UsageError):
        check_template(template)


async def test_a_template_that_gives_two_jobs_one_name_is_refused_before_submitting(
    tmp_path: Path,
) -> None:
    with pytest.raises(UsageError, match="the same file name"):
        await run_matrix(tmp_path, template="{model}")
    assert read_results(tmp_path) == []


async def test_the_template_names_the_files(tmp_path: Path) -> None:
    await run_matrix(tmp_path, template="{model}/{name}-{seed}")
    paths = sorted(f["path"] for r in read_results(tmp_path) for f in r["files"])
    assert "images/seedream-4/fox-1.png" in paths
    assert "images/imagen-4-fast/owl-2.png" in paths
    for path in paths:
        assert (tmp_path / path).resolve().is_relative_to((tmp_path / "images").resolve())


async def test_metadata_loads_with_the_datasets_imagefolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    await run_matrix(out)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(dataset) == 9
    row = next(
        r
        for r in dataset
        if r["prompt"] == "a fox, studio photo" and r["seed"] == 1 and r["model"] == "seedream-4"
    )
    assert row["image"].size == (256, 192)
    assert (row["width"], row["height"]) == (256, 192)
    assert json.loads(row["params"]) == {"width": 256, "height": 192, "seed": 1}


async def test_the_folder_loads_by_its_card_as_one_split_whatever_its_folder_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flux-1-dev/ is no "dev" split: the card names the files, so every row is in train."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    manifest = parse_manifest(
        textwrap.dedent("""
        version: 1
        jobs:
          - prompt: a {animal}
            vars: {animal: [fox, owl, cat]}
            models: [flux-1-dev, seedream-4]
            params: {width: 512, height: 512}
        run: {poll_interval: 0.02, rate_limit: 1000, concurrency: 8}
    """),
        overrides={"name_template": "{model}/{index:05d}"},
    )
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
        await run_batch(manifest, out, **emu.via, token="t", options=FAST)
    (out / "README.md").read_text().index("- krea-batch")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"]
    assert len(loaded["train"]) == 6
    assert sorted(set(loaded["train"]["model"])) == ["flux-1-dev", "seedream-4"]
    assert sorted(set(loaded["train"]["var_animal"])) == ["cat", "fox", "owl"]


def test_a_readme_of_the_users_own_is_left_alone(tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    assert write_card(card, dataset_card("files", 3, ["flux-1-dev"], {}))
    assert write_card(card, dataset_card("files", 4, ["flux-1-dev"], {}))
    assert "4 text-to-image jobs" in card.read_text()
    card.write_text("# my notes\n")
    assert not write_card(card, dataset_card("files", 5, ["flux-1-dev"], {}))
    assert card.read_text() == "# my notes\n"


async def test_metadata_rows_describe_each_image(tmp_path: Path) -> None:
    await run_matrix(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 9
    for row in rows:
        assert (tmp_path / row["file_name"]).is_file()
        assert {"prompt", "model", "seed", "width", "height", "params"} <= set(row)


def _records() -> list[ResultRecord]:
    done = [
        {
            "key": f"k{m}{s}",
            "status": "completed",
            "prompt": "a <b>fox</b>",
            "model": m,
            "seed": s,
            "files": [{"path": f"images/{m}-{s}.png"}],
            "cost_units": 3.0,
            "timings": {"seconds": 1.5},
            "params": {},
        }
        for m in ("flux-1-dev", "seedream-4")
        for s in (1, 2)
    ]
    failed = [
        {
            "key": "kf",
            "status": "failed",
            "prompt": "x",
            "model": "flux-1-dev",
            "error": "Content moderation flagged the prompt",
            "files": [],
        }
    ]
    return as_records(done + failed)


def test_the_report_has_pages_of_cards_a_model_comparison_and_failures(tmp_path: Path) -> None:
    page = write_report(tmp_path, _records(), {"manifest": "jobs.yaml"}).read_text()
    assert "<th>model flux-1-dev</th><th>model seedream-4</th>" in page
    assert "Content moderation flagged the prompt" in page
    assert "<b>fox</b>" not in page  # prompts are escaped
    assert "&lt;b&gt;fox&lt;/b&gt;" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    chunks = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert chunks == ["c00001.js", "f00001.js"]
    completed = (tmp_path / "report" / "c00001.js").read_text()
    assert completed.startswith('kreaBatchChunk("c00001",')
    assert completed.count('"status":"completed"') == 4
    write_report(tmp_path, _records()[:1], {})  # written again: the old chunks are replaced
    assert completed != (tmp_path / "report" / "c00001.js").read_text()
    assert not (tmp_path / "report" / "f00001.js").exists()


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI"):
        pytest.fail("CI must have Debian's chromium (.ci/run installs it)")
    return found


@contextlib.asynccontextmanager
async def headless_page() -> AsyncIterator[Any]:
    """A page of Debian's chromium, driven by playwright (skips where there is none)."""
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no chromium on this machine (CI installs it)")
    playwright = pytest.importorskip("playwright.async_api")
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=browser_path,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


async def test_a_gallery_of_20000_jobs_pages_and_filters_in_headless_chromium(
    tmp_path: Path,
) -> None:
    image = tmp_path / "images" / "one.png"
    image.parent.mkdir()
    Image.new("RGB", (8, 8), "teal").save(image)
    records = as_records(
        {
            "key": f"{n:016x}",
            "status": "completed" if n % 100 else "failed",
            "prompt": f"a lighthouse number {n}",
            "model": ("flux-1-dev", "seedream-4")[n % 2],
            "seed": n,
            "files": [{"path": "images/one.png"}] if n % 100 else [],
            "error": None if n % 100 else "moderated",
        }
        for n in range(20_000)
    )
    write_report(tmp_path, records, {"manifest": "big.yaml"})
    async with headless_page() as page:
        await page.goto((tmp_path / "report.html").as_uri())
        await page.wait_for_function("document.querySelectorAll('.card').length === 300")
        assert await page.inner_text("#where") == "page 1 of 66"
        await page.click("text=next ›")
        await page.wait_for_function("document.getElementById('where').textContent[5] === '2'")
        await page.fill("#f-text", "number 19999")
        await page.wait_for_function("document.querySelectorAll('.card').length === 1")
        await page.fill("#f-text", "house")  # inside "lighthouse": not a word of the prompt
        await page.wait_for_function("document.querySelectorAll('.card').length === 0")
        assert await page.inner_text("#where") == "page 1 of 1"
        await page.fill("#f-text", "")
        await page.select_option("#f-status", "failed")
        await page.wait_for_function("document.querySelectorAll('.card').length === 200")
        assert "moderated" in await page.inner_text("#grid")


async def test_the_gallery_renders_every_image_in_headless_chromium(tmp_path: Path) -> None:
    await run_matrix(tmp_path)
    assert (tmp_path / "report.html").is_file()
    async with headless_page() as page:
        await page.goto((tmp_path / "report.html").as_uri())
        await page.wait_for_function("document.querySelectorAll('.card img').length === 9")
        await page.evaluate("for (const i of document.images) i.loading = 'eager'")
        await page.wait_for_function(
            "Array.from(document.querySelectorAll('.card img')).every(i => i.complete)"
        )
        sizes = await page.evaluate(
            "Array.from(document.querySelectorAll('.card img')).map(i => i.naturalWidth)"
        )
        subs = await page.locator(".card .sub").all_inner_texts()
        await page.locator(".card img").first.click()
        caption = await page.inner_text("#zoom figcaption")
        await page.click("#zoom .close")
        closed = await page.evaluate("!document.getElementById('zoom').classList.contains('on')")
        await page.click("text=Compare")
        columns = await page.locator("#compare th").all_inner_texts()
        others = await page.locator("#compare td.cell .more img").count()
    assert others == 4, "each prompt × model cell shows its other seed as a thumbnail"
    assert any("256×192" in sub for sub in subs), subs  # the size tells tiles apart
    assert "studio photo" in caption or "passwd" in caption
    assert closed
    assert len(sizes) == 9
    assert all(width > 0 for width in sizes)
    assert "model seedream-4" in columns


async def ambiguous_folder(out: Path) -> list[str]:
    """A run whose first job's lost POST matched two remote jobs: it ends ambiguous, with
    both candidates' images under images/_unmatched/. Returns the candidates' ids."""
    manifest = small_manifest(3)
    spec = next(iter(expand(manifest)))
    async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.05"))) as emu:
        model = emu.emulator.catalog.resolve("seedream-4")
        ids = [
            emu.emulator.store.create(model, dict(spec.body), None).id,
            emu.emulator.store.create(model, {**spec.body, "seed": 999}, None).id,
        ]
        write_ambiguous_journal(out, spec.key, ids)
        await run_batch(manifest, out, **emu.run_args(), options=FAST)
    return ids


async def test_the_report_lists_ambiguous_jobs_with_their_candidates_images(
    tmp_path: Path,
) -> None:
    ids = await ambiguous_folder(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "<span>completed <b>2</b></span><span>failed <b>0</b></span>" in page
    assert "<span>ambiguous <b>1</b></span>" in page
    assert 'data-tab="ambiguous">Ambiguous (1)</button>' in page
    assert '<option value="ambiguous">' in page
    [section] = re.findall(r'<section id="ambiguous">.*?</section>', page, re.DOTALL)
    assert "a tiny test image" in section
    assert "&#34;width&#34;: 128" in section
    assert "a submit&#39;s answer was lost" in section  # the reason
    for job in ids:
        assert f"<code>{job}</code>" in section
        assert f'src="images/_unmatched/{job}.png" alt="candidate {job}"' in section
    assert "--out " in section
    assert " --retry-ambiguous</code>" in section
    assert "worst case" in section
    [chunk] = (tmp_path / "report").glob("a*.js")
    [card] = json.loads(chunk.read_text().partition(",")[2].rstrip(");\n"))
    assert card["path"] is None, "a candidate's image is not the job's own"
    assert card["unmatched"] == [
        {"path": f"images/_unmatched/{job}.png", "name": job} for job in ids
    ]
    assert "_unmatched" not in (tmp_path / "report" / "c00001.js").read_text()


def test_ambiguous_jobs_sharing_candidates_each_show_every_candidates_images(
    tmp_path: Path,
) -> None:
    """Each candidate's image is listed in the record of one of the jobs that share it."""
    ids = ["0c1d2e3f-4a5b-4c6d-8e7f-001122334455", "job/2"]
    paths = ["images/_unmatched/0c1d2e3f-4a5b-4c6d-8e7f-001122334455.png"]
    paths += ["images/_unmatched/job_2.png", "images/_unmatched/job_2-1.png"]
    records = as_records(
        {
            "key": f"k{n}",
            "status": "ambiguous",
            "prompt": f"prompt {n}",
            "model": "flux-1-dev",
            "error": "a submit's answer was lost",
            "candidates": ids,
            "files": [{"path": path} for path in files],
        }
        for n, files in enumerate([paths[:1], paths[1:]])
    )
    page = write_report(tmp_path, records, {}).read_text()
    rows = re.findall(r"<tr><td>k\d</td>.*?</tr>", page, re.DOTALL)
    assert len(rows) == 2
    for row in rows:
        assert all(f'src="{path}"' in row for path in paths), row
        assert f'alt="candidate {ids[1]}"' in row  # its image is named job_2: shown as job/2's
    cards = json.loads((tmp_path / "report" / "a00001.js").read_text().partition(",")[2][:-3])
    assert [sorted(image["path"] for image in c["unmatched"]) for c in cards] == [sorted(paths)] * 2
    assert {"path": paths[2], "name": ids[1]} in cards[0]["unmatched"]
    assert "<span>ambiguous <b>2</b></span>" in page
    assert "their images (3, paid for)" in " ".join(page.split())


async def test_the_gallery_shows_ambiguous_jobs_candidates_in_headless_chromium(
    tmp_path: Path,
) -> None:
    ids = await ambiguous_folder(tmp_path)
    async with headless_page() as page:
        await page.goto((tmp_path / "report.html").as_uri())
        await page.wait_for_function("document.querySelectorAll('.card img').length === 2")
        await page.select_option("#f-status", "ambiguous")
        await page.wait_for_function("document.querySelectorAll('.card').length === 1")
        shown = await page.inner_text("#grid")
        await page.evaluate("for (const i of document.images) i.loading = 'eager'")
        await page.wait_for_function(
            "Array.from(document.querySelectorAll('.cands img')).every(i => i.complete)"
        )
        sizes = await page.evaluate(
            "Array.from(document.querySelectorAll('.card .cands img')).map(i => i.naturalWidth)"
        )
        await page.locator(".card .cands img").first.click()
        caption = await page.inner_text("#zoom figcaption")
        await page.click("#zoom .close")
        await page.select_option("#f-status", "")
        await page.wait_for_function("document.querySelectorAll('.card').length === 3")
        await page.click("text=Ambiguous (1)")
        table = await page.inner_text("#ambiguous")
    assert "ambiguous: its answer was lost; 2 candidate job(s)" in shown
    assert len(sizes) == 2
    assert all(width > 0 for width in sizes)
    assert caption.startswith(f"an image of candidate job {ids[0]}")
    assert "or another job's" in caption
    assert all(job in table for job in ids)
    assert "--retry-ambiguous" in table
