"""One schema (#27): files, parquet and webdataset folders load with ``datasets`` as one train
split whose rows carry the same fields with the same values, declared by the dataset card,
which also names each model's licence."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from runner.batch import run_batch
from runner.catalog import load_catalog
from runner.emulator import EmulatorConfig, Latency
from runner.outputs.card import dataset_card, features
from runner.outputs.licences import LICENCES
from runner.outputs.writers.shard_recovery import Sample
from tests.engine_helpers import FAST, read_results
from tests.in_process import in_process

FORMATS = ("files", "webdataset", "parquet")
# Extra CSV columns are vars of their row; the inline entry has a var of its own, so each row
# lacks some var. gpt-image takes no seed: its rows have none. No job is named: a column of
# nulls that must still load as text.
ROWS_CSV = textwrap.dedent("""\
    prompt,style,mood
    a lighthouse in a storm,oil painting,grim
    "a café at night ☕",35mm photo,warm
    a quiet harbour,watercolour,calm
""")
MANIFEST = textwrap.dedent("""
    version: 1
    jobs:
      - prompts_file: rows.csv
        models: [flux-1-dev, gpt-image]
        model_params:
          flux-1-dev: {width: 640, height: 512}
          gpt-image: {width: 512, height: 768}
        seeds: [3]
      - prompt: a {animal}
        vars: {animal: [fox]}
        model: flux-1-dev
        params: {width: 512, height: 512}
    run: {poll_interval: 0.02, rate_limit: 1000, concurrency: 8, lost_answer_wait: 10ms}
""")
JOBS = 7
COLUMNS = [
    "file",
    "key",
    "index",
    "name",
    "model",
    "prompt",
    "seed",
    "width",
    "height",
    "params",
    "job_id",
    "var_animal",
    "var_mood",
    "var_style",
]
INTEGERS = {"index", "seed", "width", "height"}


@dataclass
class Loaded:
    out: dict[str, Path]
    datasets: dict[str, Any]  # format → the DatasetDict load_dataset(OUT) gave
    results: dict[str, dict[str, dict[str, Any]]]  # format → key → results.jsonl record

    def rows(self, format: str) -> list[dict[str, Any]]:
        """Each loaded row's fields (webdataset's from its JSON), images left out."""
        train = self.datasets[format]["train"]
        if format == "webdataset":
            return list(train.remove_columns(["png", "jpg", "webp"])["json"])
        return list(train.remove_columns(["image"]))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """The one manifest run into each format on the emulator, each folder loaded by its card
    (the slow part, shared by every check below)."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("one-schema")
    (root / "rows.csv").write_text(ROWS_CSV, encoding="utf-8")
    manifest = root / "jobs.yaml"
    manifest.write_text(MANIFEST)
    out = {format: root / format for format in FORMATS}

    async def run_all() -> None:
        async with in_process(EmulatorConfig(latency=Latency.parse("fixed:0.02"))) as emu:
            for format in FORMATS:
                result = await run_batch(
                    manifest,
                    out[format],
                    **emu.via,
                    token="t",
                    options=FAST,
                    overrides={"format": format},
                )
                assert result.counts.completed == JOBS

    asyncio.run(run_all())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        loaded = {
            format: datasets.load_dataset(str(out[format]), cache_dir=str(root / "cache"))
            for format in FORMATS
        }
        results = {
            format: {record["key"]: record for record in read_results(out[format])}
            for format in FORMATS
        }
        yield Loaded(out, loaded, results)


def test_each_format_loads_as_one_train_split_with_every_job_once(loaded: Loaded) -> None:
    for format in FORMATS:
        assert list(loaded.datasets[format]) == ["train"], format
        keys = [row["key"] for row in loaded.rows(format)]
        assert sorted(keys) == sorted(loaded.results[format]), format
        assert len(keys) == JOBS


def test_files_and_parquet_have_the_same_columns_and_types(loaded: Loaded) -> None:
    files = loaded.datasets["files"]["train"].features
    parquet = loaded.datasets["parquet"]["train"].features
    assert list(files) == list(parquet) == ["image", *COLUMNS]
    assert files == parquet
    for name in COLUMNS:
        assert files[name].dtype == ("int64" if name in INTEGERS else "string"), name
    json_fields = loaded.datasets["webdataset"]["train"].features["json"]
    assert list(json_fields) == COLUMNS
    assert {name: json_fields[name] for name in COLUMNS} == {name: files[name] for name in COLUMNS}


def test_rows_carry_the_same_values_in_every_format(loaded: Loaded) -> None:
    """The same fields and values, but for what differs by nature: the job id (each folder ran
    its own jobs) and ``file``, the image's place, which results.jsonl names the same way."""
    by_format = {format: {row["key"]: row for row in loaded.rows(format)} for format in FORMATS}
    for format, rows in by_format.items():
        for key, row in rows.items():
            record = loaded.results[format][key]
            assert row["file"] == record["files"][0]["path"]
            assert row["job_id"] == record["job_id"]
            assert json.loads(row["params"]) == record["params"]
            assert row["var_style"] == record["vars"].get("style")

    def comparable(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k not in ("file", "job_id")}

    files = {key: comparable(row) for key, row in by_format["files"].items()}
    for format in ("webdataset", "parquet"):
        assert {key: comparable(row) for key, row in by_format[format].items()} == files, format
    cafe = next(row for row in files.values() if "café" in row["prompt"])
    assert (cafe["var_style"], cafe["var_mood"], cafe["var_animal"]) == ("35mm photo", "warm", None)
    fox = next(row for row in files.values() if row["prompt"] == "a fox")
    assert (fox["name"], fox["var_animal"], fox["var_style"]) == (None, "fox", None)
    assert {row["seed"] for row in files.values() if row["model"] == "gpt-image"} == {None}


def test_width_and_height_are_each_images_own_size(loaded: Loaded) -> None:
    for format in FORMATS:
        train = loaded.datasets[format]["train"]
        image_column = "png" if format == "webdataset" else "image"
        for example in train:
            row = example["json"] if format == "webdataset" else example
            assert example[image_column].size == (row["width"], row["height"]), format
    sizes = {(r["model"], r["width"], r["height"]) for r in loaded.rows("parquet")}
    assert sizes == {("flux-1-dev", 640, 512), ("gpt-image", 512, 768), ("flux-1-dev", 512, 512)}


def test_each_tar_sample_has_its_prompt_as_a_utf8_caption(loaded: Loaded) -> None:
    for example in loaded.datasets["webdataset"]["train"]:
        assert example["txt"] == example["json"]["prompt"]
    [shard] = (loaded.out["webdataset"] / "shards").iterdir()
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        captions = {
            name: tar.extractfile(name).read()  # type: ignore[union-attr]
            for name in names
            if name.endswith(".txt")
        }
    stems = {name.rsplit(".", 1)[0] for name in names}
    assert {name.rsplit(".", 1)[0] for name in captions} == stems
    assert "a café at night ☕".encode() in captions.values()


def test_the_cards_features_are_what_datasets_loaded(loaded: Loaded) -> None:
    datasets = pytest.importorskip("datasets")
    for format in FORMATS:
        text = (loaded.out[format] / "README.md").read_text(encoding="utf-8")
        card = yaml.safe_load(text.split("---\n")[1])
        declared = datasets.Features._from_yaml_list(card["dataset_info"]["features"])
        assert loaded.datasets[format]["train"].features == declared, format
        if format != "webdataset":  # imagefolder reads them from the config only
            config = datasets.Features._from_yaml_list(card["configs"][0]["features"])
            assert config == declared
        assert card["license"] == "other"  # flux-1-dev's licence does not cover gpt-image
        assert "FLUX.1 [dev] Non-Commercial License" in text
        assert "`gpt-image`: licence not published" in text


def _card_yaml(text: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(text.split("---\n")[1])
    return data


def test_the_card_declares_every_column_for_each_format() -> None:
    datasets = pytest.importorskip("datasets")
    expected = {
        **{name: datasets.Value("int64" if name in INTEGERS else "string") for name in COLUMNS},
    }
    for format in FORMATS:
        text = dataset_card(format, 3, ["flux-1-dev"], {}, var_names=["style", "mood", "animal"])
        found = datasets.Features._from_yaml_list(_card_yaml(text)["dataset_info"]["features"])
        if format == "webdataset":
            assert list(found) == ["png", "jpg", "webp", "txt", "json", "__key__", "__url__"]
            assert dict(found["json"]) == expected
            assert found["txt"] == found["__key__"] == datasets.Value("string")
        else:
            assert found == datasets.Features({"image": datasets.Image(), **expected})
    assert [name for name, _ in features("parquet", [])][-1] == "job_id"


def test_a_card_without_var_names_declares_nothing_and_keeps_its_old_call() -> None:
    card = _card_yaml(dataset_card("parquet", 3, ["seedream-4"], {}))  # merge's call
    assert "dataset_info" not in card
    assert "features" not in card["configs"][0]
    assert card["configs"][0]["data_files"] == [{"split": "train", "path": ["shards/*.parquet"]}]


def test_var_names_that_are_no_plain_words_are_quoted() -> None:
    text = dataset_card("files", 1, [], {}, var_names=["a: b", "#x", 'say "hi"'])
    names = [f["name"] for f in _card_yaml(text)["dataset_info"]["features"]]
    assert names[-3:] == ["var_#x", "var_a: b", 'var_say "hi"']


@pytest.mark.parametrize(
    ("models", "license", "name"),
    [
        (["flux-1-dev"], "other", "flux-1-dev-non-commercial-license"),
        (["flux-1-dev", "flux-1-kontext-dev"], "other", "flux-1-dev-non-commercial-license"),
        (["qwen-2512", "z-image"], "apache-2.0", None),
        (["flux-1-dev", "qwen-2512"], "other", None),
        (["flux-1-dev", "seedream-4"], "other", None),
        (["seedream-4"], "other", None),
    ],
)
def test_the_card_has_one_licence_only_when_one_covers_every_model(
    models: list[str], license: str, name: str | None
) -> None:
    text = dataset_card("files", 3, models, {})
    card = _card_yaml(text)
    assert card["license"] == license
    assert card.get("license_name") == name
    if name is not None:
        assert card["license_link"].startswith("https://huggingface.co/black-forest-labs/")
    for model in models:
        line = next(line for line in text.splitlines() if line.startswith(f"- `{model}`:"))
        published = model in LICENCES
        assert ("licence not published" in line) is not published, line
    assert "license" not in _card_yaml(dataset_card("files", 0, [], {}))


def test_every_licence_names_a_catalog_model_and_its_source() -> None:
    ids = {model.id for model in load_catalog().models}
    for model, (licence, source) in LICENCES.items():
        assert model in ids
        assert licence.link.startswith("https://")
        assert source
        assert licence.hub_id == "other" or licence.hub_name is None
    assert LICENCES["flux-1-dev"][0].name.startswith("FLUX.1 [dev] Non-Commercial License")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_shard_row_takes_the_size_from_the_image_not_the_request(tmp_path: Path) -> None:
    job = {"key": "k", "prompt": "p", "params": {"width": 512, "height": 512}, "vars": {"a": 1}}
    sample = Sample("shards/00000.tar", "k", ".png", tmp_path / "k.png", job)
    row = sample.row(_png(48, 32), ["a", "b"])
    assert (row["width"], row["height"]) == (48, 32)
    assert (row["file"], row["var_a"], row["var_b"]) == ("shards/00000.tar#k.png", "1", None)
    assert list(row) == [*COLUMNS[:-3], "var_a", "var_b"]
    unreadable = sample.row(b"not an image", [])
    assert (unreadable["width"], unreadable["height"]) == (512, 512)  # what was asked for
