"""Real images for emulated jobs: deterministic from prompt and seed, cheap to render."""

from __future__ import annotations

import hashlib
import io
import textwrap
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from runner.catalog import Model

_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}


def image_size(model: Model, body: Mapping[str, Any]) -> tuple[int, int]:
    """Width and height the request asks for: explicit sizes, else aspect ratio × resolution."""

    def default(name: str) -> Any:
        param = model.param(name)
        return param.default if param else None

    width, height = body.get("width", default("width")), body.get("height", default("height"))
    if width and height and "aspect_ratio" not in body:
        return max(16, int(width)), max(16, int(height))
    ratio = str(body.get("aspect_ratio") or default("aspect_ratio") or "1:1")
    long_side = _LONG_SIDE.get(str(body.get("resolution") or default("resolution") or "1K"), 1024)
    w, h = (float(x) for x in ratio.split(":"))
    if w >= h:
        return long_side, max(16, round(long_side * h / w))
    return max(16, round(long_side * w / h)), long_side


def image_format(body: Mapping[str, Any]) -> tuple[str, str]:
    """Pillow format name and MIME type; PNG unless the request asks for another."""
    return _FORMATS.get(str(body.get("output_format") or "png").lower(), _FORMATS["png"])


@lru_cache(maxsize=128)
def render(
    prompt: str, seed: int, width: int, height: int, fmt: str = "PNG", model: str = ""
) -> bytes:
    """A gradient with a few discs and the prompt written on it; same inputs, same bytes."""
    digest = hashlib.sha256(f"{model}\x00{seed}\x00{prompt}".encode()).digest()
    colours = [tuple(digest[i : i + 3]) for i in range(0, 30, 3)]
    mask = Image.linear_gradient("L").rotate(90 * (digest[30] % 4)).resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), colours[0]),
        Image.new("RGB", (width, height), colours[1]),
        mask,
    )
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for i in range(2, 7):
        x, y = digest[i] / 255 * width, digest[i + 8] / 255 * height
        r = (0.05 + digest[i + 16] / 255 * 0.2) * short
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colours[i])
    size = max(10, short // 28)
    font = ImageFont.load_default(size=size)
    lines = textwrap.wrap(prompt, width=max(10, int(width / (size * 0.55))))[:3]
    y = height - (len(lines) + 1) * size * 1.3
    for line in lines:
        draw.text(
            (size, y), line, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0)
        )
        y += size * 1.3
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, fmt, compress_level=1)
    else:
        image.save(out, fmt, quality=85)
    return out.getvalue()
