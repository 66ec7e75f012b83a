"""One `sizes:` list across a matrix of models: each model gets the size in its own form."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from runner.cli.views import plan_text
from runner.errors import ManifestError
from runner.manifest import expand, parse_manifest
from runner.manifest.plan import make_plan


def _bodies(sizes: str, models: str, **extra: str) -> dict[tuple[str, str], dict[str, Any]]:
    """What each model's request holds beside the prompt, for each size."""
    text = textwrap.dedent(f"""
        version: 1
        jobs:
          - prompt: a fox
            models: {models}
            sizes: {sizes}
    """) + "".join(f"    {k}: {v}\n" for k, v in extra.items())
    manifest = parse_manifest(text)
    return {
        (variant.size or "", variant.model.id): dict(variant.params)
        for entry in manifest.entries
        for variant in entry.variants
    }


def test_one_sizes_list_works_across_models_of_every_form() -> None:
    bodies = _bodies(
        '["16:9", 512x512]', "[flux-1-dev, nano-banana-pro, krea-2-medium, seedream-4]"
    )
    assert bodies[("16:9", "flux-1-dev")] == {"width": 1360, "height": 768}  # 1 MP, its default
    assert bodies[("16:9", "nano-banana-pro")] == {"aspect_ratio": "16:9"}
    assert bodies[("16:9", "krea-2-medium")] == {"aspect_ratio": "16:9", "resolution": "1K"}
    assert bodies[("16:9", "seedream-4")] == {"width": 1360, "height": 768}
    assert bodies[("512x512", "flux-1-dev")] == {"width": 512, "height": 512}
    assert bodies[("512x512", "krea-2-medium")] == {"aspect_ratio": "1:1", "resolution": "1K"}


def test_a_size_a_model_takes_as_written_makes_the_same_job_as_before() -> None:
    """Translation only fills what used to be an error: existing folders keep their keys."""

    def keys(text: str) -> set[str]:
        return {s.key for s in expand(parse_manifest(text))}

    base = "version: 1\njobs:\n  - prompt: a fox\n    model: {model}\n    {how}\n"
    assert keys(base.format(model="flux", how="sizes: [1024x576]")) == keys(
        base.format(model="flux", how="params: {width: 1024, height: 576}")
    )
    assert keys(base.format(model="nano-banana-pro", how="sizes: ['16:9']")) == keys(
        base.format(model="nano-banana-pro", how="params: {aspect_ratio: '16:9'}")
    )


@pytest.mark.parametrize(
    ("size", "model", "sent"),
    [
        ("21:9", "krea-2-medium", {"aspect_ratio": "2.35:1", "resolution": "1K"}),
        ("5:4", "krea-2-medium", {"aspect_ratio": "4:3", "resolution": "1K"}),
        ("2.35:1", "gpt-image-2", {"aspect_ratio": "2:1"}),
        ("21:9", "z-image", {"aspect_ratio": "16:9", "resolution": "1K"}),
        ("21:9", "flux-1.1-pro", {"width": 1440, "height": 624}),  # within its 1440 maximum
        ("9:16", "flux-1-dev", {"width": 768, "height": 1360}),
    ],
)
def test_the_nearest_allowed_value_where_a_model_has_a_fixed_list_or_bounds(
    size: str, model: str, sent: dict[str, Any]
) -> None:
    bodies = _bodies(f"['{size}']", f"[{model}]")
    assert bodies[(size, model)] == sent


def test_a_resolution_the_manifest_gives_is_kept() -> None:
    bodies = _bodies("[2048x1152]", "[krea-2-medium]", params="{resolution: 1K, creativity: low}")
    assert bodies[("2048x1152", "krea-2-medium")] == {
        "aspect_ratio": "16:9",
        "resolution": "1K",
        "creativity": "low",
    }


def test_pixels_beyond_a_models_bounds_say_how_to_give_the_size_instead() -> None:
    with pytest.raises(ManifestError) as caught:
        _bodies("[2048x2048]", "[flux-1-dev, flux-1.1-pro]")
    assert caught.value.path == "jobs[0].sizes[0]"
    assert "1440 for flux-1.1-pro" in caught.value.message
    assert "as a ratio ('16:9') each model takes its own pixel count" in caught.value.message


def test_a_model_that_takes_no_size_is_named() -> None:
    with pytest.raises(ManifestError, match="seededit takes no size"):
        _bodies("['1:1']", "[seededit]", params="{image_url: 'https://example.com/a.png'}")


def test_plan_shows_what_each_model_is_sent_for_each_size() -> None:
    manifest = parse_manifest(
        "version: 1\njobs:\n  - prompt: a fox\n"
        "    models: [flux-1-dev, krea-2-medium]\n    sizes: ['16:9', 512x512]\n"
    )
    plan = make_plan(manifest)
    rows = {line.split()[0]: line.split()[1:] for line in plan_text(plan).splitlines() if line}
    assert rows["SIZES"] == ["SENT", "16:9", "512x512"]
    assert rows["flux-1-dev"] == ["1360x768", "512x512"]
    assert rows["krea-2-medium"] == ["16:9", "at", "1K", "1:1", "at", "1K"]
    sent = {(s["size"], s["model"]): s["sent"] for s in plan.to_json()["sizes"]}
    assert sent[("16:9", "flux-1-dev")] == {"width": 1360, "height": 768}
