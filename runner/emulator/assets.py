"""The emulator's ``POST /assets``: uploaded files, served back, and checked when referenced."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from runner.timefmt import iso_time

MAX_BYTES = 75 * 1024 * 1024
PATH = "/_emulator/assets/"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AssetStore:
    """Files uploaded to this emulator, by id."""

    def __init__(self, stats: Counter[str], clock: Any) -> None:
        self.stats = stats
        self.clock = clock
        self.files: dict[str, tuple[bytes, str]] = {}  # id → (content, MIME type)

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /assets``: multipart with a ``file`` field, as Krea takes it."""
        if not request.content_type.startswith("multipart/"):
            return _error(400, "Upload a file as multipart/form-data (field 'file').")
        reader = await request.multipart()
        content = b""
        async for part in reader:
            if getattr(part, "name", None) == "file":
                content = await part.read(decode=False)  # type: ignore[union-attr]
                if len(content) > MAX_BYTES:
                    return _error(413, "Files are limited to 75 MB.")
        if not content:
            return _error(400, "The 'file' field is missing or empty.")
        try:
            with Image.open(io.BytesIO(content)) as image:
                width, height, kind = image.width, image.height, image.get_format_mimetype()
        except (UnidentifiedImageError, OSError):
            return _error(422, "The file is not an image this emulator can read.")
        asset_id = str(uuid.uuid4())
        self.files[asset_id] = (content, kind or "application/octet-stream")
        self.stats["assets"] += 1
        return web.json_response(
            {
                "id": asset_id,
                "image_url": f"{request.scheme}://{request.host}{PATH}{asset_id}",
                "uploaded_at": iso_time(self.clock()),
                "width": width,
                "height": height,
                "size_bytes": len(content),
                "mime_type": kind,
            }
        )

    async def serve(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return _error(404, "No such asset")
        return web.Response(body=found[0], content_type=found[1])

    def unknown_reference(self, body: Any) -> str | None:
        """A URL in a request body that points at an asset this emulator does not hold (or a
        stand-in the runner should have replaced): Krea answers such bodies 422."""
        for text in _strings(body):
            if text.startswith("krea-batch-asset:"):
                return text
            if PATH in text and text.rsplit("/", 1)[-1] not in self.files:
                return text
        return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
