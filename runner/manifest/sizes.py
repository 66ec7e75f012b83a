"""Sizes: one ``sizes:`` list across a matrix of models, each model given a size in its form.

A size is written ``WIDTHxHEIGHT`` or as an aspect ratio (``16:9``). A model that takes it as
written gets it as written: the request, and so the job's key, is what it always was. Else it
is translated:

- for a model that takes ``aspect_ratio``: the nearest ratio it allows (nearest on a log
  scale, so 2:1 is as far from 1:1 as 1:2), with the resolution it requires when the manifest
  gives none (nearest to the pixel size's long side: 1K ≈ 1024 px);
- for a model that takes ``width`` and ``height``: the ratio at the model's usual pixel count
  (its default width × height, else 1024 × 1024), in multiples of 16, within its bounds.

Pure: a model's schema in, request parameters out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.catalog import Model
from runner.integers import parse_int

USUAL_PIXELS = 1024 * 1024  # for a model that publishes no default size
STEP = 16  # pixel sizes in multiples of 16: what diffusion and OpenAI-style models take
_RESOLUTION = re.compile(r"(\d+(?:\.\d+)?)K", re.ASCII)  # 1K ≈ 1024 px on the long side


class SizeError(ValueError):
    """A model that takes no size at all."""


@dataclass(frozen=True, slots=True)
class Size:
    """A size as the manifest wrote it."""

    text: str
    ratio: float  # width / height
    pixels: tuple[int, int] | None = None  # (width, height) when written in pixels
    ratio_text: str | None = None  # "16:9" when written as a ratio, spaces removed


def parse_size(text: str) -> Size:
    """``1024x576`` or ``16:9`` (the manifest's schema has checked the shape)."""
    written = text.strip()
    if ":" in written:
        compact = re.sub(r"\s+", "", written)
        across, down = (float(part) for part in compact.split(":"))
        return Size(written, across / down if down else math.inf, ratio_text=compact)
    width_text, height_text = re.split(r"\s*[xX×]\s*", written)
    width, height = parse_int(width_text, "width"), parse_int(height_text, "height")
    return Size(written, width / height if height else math.inf, pixels=(width, height))


def size_params(model: Model, size: Size, given: Mapping[str, Any]) -> dict[str, Any]:
    """The request parameters ``size`` gives ``model`` (``given``: the manifest's own
    parameters, which a size never overrides but for the size itself)."""
    props = model.properties
    takes_ratio = "aspect_ratio" in props
    takes_pixels = "width" in props and "height" in props
    if size.pixels is not None and takes_pixels:
        return {"width": size.pixels[0], "height": size.pixels[1]}
    if takes_ratio:
        allowed = _enum(props["aspect_ratio"])
        as_written = size.ratio_text is not None and (allowed is None or size.ratio_text in allowed)
        ratio = size.ratio_text if as_written else _nearest_ratio(size, allowed)
        params: dict[str, Any] = {"aspect_ratio": ratio}
        resolution = _resolution(model, size, given)
        if resolution is not None:
            params["resolution"] = resolution
        return params
    if takes_pixels:
        width, height = _pixels(model, size.ratio)
        return {"width": width, "height": height}
    raise SizeError(f"{model.id} takes no size (neither width and height nor aspect_ratio)")


def size_text(params: Mapping[str, Any]) -> str:
    """``1360x768``, ``16:9`` or ``16:9 at 1K``: what a model is sent for a size."""
    if "aspect_ratio" in params:
        at = f" at {params['resolution']}" if "resolution" in params else ""
        return f"{params['aspect_ratio']}{at}"
    return f"{params['width']}x{params['height']}"


def _enum(spec: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    if not spec or "enum" not in spec:
        return None
    return tuple(str(value) for value in spec["enum"] if value is not None)


def _ratio_of(text: str) -> float | None:
    try:
        across, down = (float(part) for part in text.split(":"))
    except ValueError:
        return None
    return across / down if across > 0 and down > 0 else None


def _nearest_ratio(size: Size, allowed: tuple[str, ...] | None) -> str:
    if allowed is None:  # any ratio: the pixels' own, reduced
        assert size.pixels is not None
        width, height = size.pixels
        divisor = math.gcd(width, height) or 1
        return f"{width // divisor}:{height // divisor}"
    target = math.log(size.ratio)
    scored = [(abs(math.log(r) - target), text) for text in allowed if (r := _ratio_of(text))]
    return min(scored, key=lambda pair: pair[0])[1] if scored else allowed[0]


def _resolution(model: Model, size: Size, given: Mapping[str, Any]) -> str | None:
    """The resolution a model requires and the manifest does not give: nearest to the
    pixel size's long side, else the model's default, else the first it allows."""
    param = model.param("resolution")
    if param is None or not param.required or "resolution" in given or not param.enum:
        return None
    choices = [str(value) for value in param.enum if value is not None]
    if size.pixels is not None:
        long_side = max(size.pixels)
        sized = [
            (abs(float(match.group(1)) * 1024 - long_side), choice)
            for choice in choices
            if (match := _RESOLUTION.fullmatch(choice))
        ]
        if sized:
            return min(sized, key=lambda pair: pair[0])[1]
    return str(param.default) if param.default is not None else choices[0]


def _pixels(model: Model, ratio: float) -> tuple[int, int]:
    """Width and height of ``ratio`` at the model's usual pixel count, within its bounds."""
    width_param, height_param = model.param("width"), model.param("height")
    assert width_param is not None
    assert height_param is not None
    defaults = (width_param.default, height_param.default)
    usual = defaults[0] * defaults[1] if all(isinstance(d, int | float) for d in defaults) else 0
    area = float(usual or USUAL_PIXELS)
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
    for param, side in ((width_param, width), (height_param, height)):
        if param.maximum is not None and side > param.maximum:  # shrink both, keep the ratio
            width, height = width * param.maximum / side, height * param.maximum / side
    return _step(width, width_param.minimum, width_param.maximum), _step(
        height, height_param.minimum, height_param.maximum
    )


def _step(side: float, low: float | None, high: float | None) -> int:
    """``side`` in a multiple of STEP, within [low, high]."""
    value = max(STEP, round(side / STEP) * STEP)
    if high is not None and value > high:
        value = int(high // STEP * STEP)
    if low is not None and value < low:
        value = int(math.ceil(low / STEP) * STEP)
    return value
