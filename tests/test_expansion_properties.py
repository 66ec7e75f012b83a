"""Properties of expansion that must hold for any matrix a user can write."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.manifest import expand, parse_manifest

words = st.text(alphabet="abcdefghij ", min_size=1, max_size=12).filter(lambda s: s.strip())
models = st.lists(
    st.sampled_from(["flux-1-dev", "imagen-4", "ideogram-3", "z-image"]),
    min_size=1,
    max_size=3,
    unique=True,
)
var_values = st.lists(
    st.sampled_from(["red", "blue", "green", "gold", "ink", 3, 4.5]),
    min_size=1,
    max_size=3,
    unique=True,
)


@st.composite
def matrices(draw: st.DrawFn) -> tuple[str, int]:
    prompts = draw(st.lists(words, min_size=1, max_size=3, unique=True))
    var_names = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True))
    values = {name: draw(var_values) for name in var_names}
    chosen = draw(models)
    seeds = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3, unique=True))
    count = draw(st.integers(1, 3))
    suffix = " ".join(f"{{{n}}}" for n in var_names)
    lines = [
        "version: 1",
        "jobs:",
        f"  - prompts: {[p + ' ' + suffix for p in prompts]!r}",
        f"    models: {chosen}",
        f"    seeds: {seeds}",
        f"    count: {count}",
        "    model_params: {z-image: {aspect_ratio: '1:1', resolution: 1K}}",
    ]
    if values:
        lines.append(f"    vars: {values!r}")
    expected = (
        len(prompts) * math.prod(len(v) for v in values.values()) * len(chosen) * len(seeds) * count
    )
    return "\n".join(lines), expected


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_count_is_the_product_of_the_matrix_and_keys_are_unique(case: tuple[str, int]) -> None:
    text, expected = case
    manifest = parse_manifest(text)
    keys = [spec.key for spec in expand(manifest)]
    assert manifest.total_jobs == expected
    assert len(keys) == expected
    assert len(set(keys)) == expected


@settings(max_examples=30, deadline=None)
@given(matrices())
def test_the_same_manifest_always_gives_the_same_specs(case: tuple[str, int]) -> None:
    text, _ = case
    first = [(s.key, dict(s.body)) for s in expand(parse_manifest(text))]
    second = [(s.key, dict(s.body)) for s in expand(parse_manifest(text))]
    assert first == second
