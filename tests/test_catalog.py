"""The catalog: coverage of Krea's image models, faithfulness to the spec, prices, messages."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
import yaml

from runner.catalog import Catalog
from tests.conftest import ROOT

REQUIRED_MODELS = [
    "krea-2-medium",
    "krea-2-large",
    "krea-2-medium-turbo",
    "flux-1-dev",
    "flux-1.1-pro",
    "flux-1.1-pro-ultra",
    "flux-1-kontext-dev",
    "nano-banana",
    "nano-banana-2",
    "nano-banana-pro",
    "imagen-3",
    "imagen-4",
    "imagen-4-fast",
    "imagen-4-ultra",
    "ideogram-2-turbo",
    "ideogram-3",
    "gpt-image",
    "gpt-image-2",
    "seedream-4",
    "seedream-5-lite",
    "qwen-2512",
    "z-image",
    "luma-uni-1",
    "runway-gen-4-image",
]


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_every_required_model_is_in_the_catalog(catalog: Catalog, name: str) -> None:
    model = catalog.resolve(name)
    assert model.endpoint.startswith("/generate/image/")
    assert model.params[0].name == "prompt" or model.param("prompt") is not None


@pytest.mark.parametrize(
    ("alias", "model_id"),
    [
        ("flux", "flux-1-dev"),
        ("Nano_Banana_Pro", "nano-banana-pro"),
        ("krea-2", "krea-2-medium"),
        ("bfl/flux-1-dev", "flux-1-dev"),
        ("/generate/image/openai/gpt-image-2", "gpt-image-2"),
    ],
)
def test_aliases_and_paths_resolve(catalog: Catalog, alias: str, model_id: str) -> None:
    assert catalog.resolve(alias).id == model_id


def test_unknown_model_names_the_closest(catalog: Catalog) -> None:
    assert "did you mean flux-1-dev" in catalog.unknown_model_message("flux-1-devv")


def test_aliases_are_unambiguous(catalog: Catalog) -> None:
    names = [n for m in catalog for n in (m.id, *m.aliases)]
    assert len(names) == len(set(names))


def test_catalog_json_is_what_the_spec_generates(openapi_spec: dict[str, Any]) -> None:
    spec = importlib.util.spec_from_file_location("sync_catalog", ROOT / "tools/sync_catalog.py")
    assert spec is not None
    assert spec.loader is not None
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    shipped = json.loads((ROOT / "runner/catalog.json").read_text())
    assert sync.build(openapi_spec) == shipped, "run `python tools/sync_catalog.py`"


def test_every_spec_image_path_and_range_is_in_the_catalog(
    catalog: Catalog, openapi_spec: dict[str, Any]
) -> None:
    """What the overlay does not correct is the spec's, field for field; renamed fields keep
    the spec's ranges under their new names."""
    overlay = yaml.safe_load((ROOT / "tools/catalog_overlay.yaml").read_text())["models"]
    paths = {p: v for p, v in openapi_spec["paths"].items() if p.startswith("/generate/image/")}
    assert len(paths) >= 20
    for path, item in paths.items():
        model = catalog.by_endpoint(path)
        assert model is not None, path
        fix = overlay.get(model.id, {})
        added = set(fix.get("properties", {}))
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        renamed = {model.renamed_fields.get(n, n): n for n in schema["properties"]}
        assert set(model.properties) - added == set(renamed), path
        for name, spec_name in renamed.items():
            prop = schema["properties"][spec_name]
            param = model.param(name)
            assert param is not None
            assert (param.minimum, param.maximum) == (prop.get("minimum"), prop.get("maximum"))
            assert param.enum == (tuple(prop["enum"]) if "enum" in prop else None)
            assert param.default == prop.get("default")
        required = {p.name for p in model.params if p.required}
        assert required == set(fix.get("required", schema.get("required", []))), path


def test_the_overlay_names_a_source_for_every_correction(catalog: Catalog) -> None:
    overlay = yaml.safe_load((ROOT / "tools/catalog_overlay.yaml").read_text())["models"]
    for model_id, fix in overlay.items():
        assert fix.get("source"), f"{model_id}: say where the correction comes from"
        assert catalog.resolve(model_id).source == fix["source"]


def test_krea_2_is_as_the_fact_sheet_says(catalog: Catalog) -> None:
    for size, usd in [("medium", 0.03), ("large", 0.06), ("medium-turbo", 0.015)]:
        model = catalog.resolve(f"krea-2-{size}")
        assert model.endpoint == f"/generate/image/krea/krea-2/{size}"
        assert {p.name for p in model.params if p.required} == {
            "prompt",
            "aspect_ratio",
            "resolution",
        }
        base = {"prompt": "x", "aspect_ratio": "2.35:1", "resolution": "1K"}
        assert not list(model.problems({**base, "creativity": "raw"}))
        assert model.estimate_usd(base) == usd
        refs = [{"url": "https://a.example/b.png", "strength": 0.5}]
        moodboard = [{"id": "5b2f7c1e-7a35-4b8e-9a52-2f3c8e1d9b40"}]
        assert model.estimate_usd({**base, "image_style_references": refs}) > usd
        with_both = {**base, "image_style_references": refs, "moodboards": moodboard}
        assert model.estimate_usd(with_both) == model.estimate_usd(
            {**base, "moodboards": moodboard}
        )
        assert list(model.problems({**base, "resolution": "2K"}))
        assert list(model.problems({**base, "aspect_ratio": "21:9"}))
        assert list(model.problems({**base, "image_style_references": refs * 11}))
        assert list(model.problems({**base, "moodboards": moodboard * 2}))
        too_strong = [{"url": "https://a.example/b.png", "strength": 1.5}]
        assert list(model.problems({**base, "image_style_references": too_strong}))


@pytest.mark.parametrize(
    ("model_id", "body", "units"),
    [
        ("flux-1-dev", {"prompt": "x"}, 3.0),
        ("nano-banana-pro", {"prompt": "xyz"}, 60.1),
        ("nano-banana-pro", {"prompt": "xyz", "resolution": "4K"}, 120.0),
        ("nano-banana-2", {"prompt": "xyz", "resolution": "2K"}, 57.8),
        ("ideogram-3", {"prompt": "x"}, 34.4),
        ("ideogram-3", {"prompt": "x", "character_reference_images": ["https://a/b.png"]}, 85.9),
        ("luma-uni-1", {"prompt": "x", "mode": "max", "style_images": [{}, {}]}, 60.7),
        ("seededit", {"prompt": "x", "image_url": "https://a/b.png"}, None),
    ],
)
def test_price_estimates_follow_the_published_tables(
    catalog: Catalog, model_id: str, body: dict[str, Any], units: float | None
) -> None:
    assert catalog.resolve(model_id).estimate_units(body) == units


@pytest.mark.parametrize(
    ("model_id", "body", "expected"),
    [
        ("flux-1-dev", {"prompt": "x", "width": 4000}, ("width", "4000 is above the maximum 2368")),
        ("flux-1-dev", {"prompt": "x", "steps": 0}, ("steps", "0 is below the minimum 1")),
        (
            "nano-banana-pro",
            {"prompt": "xyz", "resolution": "8K"},
            ("resolution", "'8K' is not one of"),
        ),
        ("flux-1-dev", {"prompt": "x", "quality": "high"}, ("quality", "does not take 'quality'")),
        (
            "nano-banana",
            {"prompt": "x", "aspectRatio": "1:1"},
            ("aspectRatio", "renamed to 'aspect_ratio'"),
        ),
        ("seedream-4", {"prompt": "x"}, ("width", "seedream-4 requires 'width'")),
        (
            "flux-1-dev",
            {"prompt": "x", "styles": [{"id": "a", "strength": 5}]},
            ("styles[0].strength", "5 is above the maximum 2"),
        ),
        ("flux-1-dev", {"prompt": "x", "width": "big"}, ("width", "'big' is not of type integer")),
    ],
)
def test_problems_name_the_field_and_what_is_allowed(
    catalog: Catalog, model_id: str, body: dict[str, Any], expected: tuple[str, str]
) -> None:
    problems = list(catalog.resolve(model_id).problems(body))
    assert any(path == expected[0] and expected[1] in msg for path, msg in problems), problems


def test_a_valid_body_has_no_problems(catalog: Catalog) -> None:
    body = {"prompt": "x", "width": 1024, "height": 576, "steps": 28, "seed": 7}
    assert list(catalog.resolve("flux-1-dev").problems(body)) == []
