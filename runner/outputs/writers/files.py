"""``--format files``: one file per image under images/, as a folder of loose files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.outputs.images import image_extension
from runner.outputs.layout import relative
from runner.outputs.records import FileEntry
from runner.outputs.writers.base import Fetched, Writer, checked


class FilesWriter(Writer):
    format = "files"

    def partial_path(self, name: str) -> Path:
        return self.folder.partial_path(name)

    def place(self, fetched: Fetched, stem: str, provenance: Mapping[str, Any] | None) -> FileEntry:
        sha256, size = checked(fetched, provenance)
        final = self.folder.place(
            fetched.path, stem + image_extension(fetched.content_type, fetched.url)
        )
        return {"path": relative(final, self.folder.root), "sha256": sha256, "bytes": size}
