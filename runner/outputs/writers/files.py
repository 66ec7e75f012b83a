"""``--format files``: one file per image under images/, as a folder of loose files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.outputs.destination import Destination
from runner.outputs.folder import OutputFolder
from runner.outputs.images import image_extension
from runner.outputs.layout import relative
from runner.outputs.writers.base import Fetched, Writer, checked
from runner.state.records import FileEntry


class FilesWriter(Writer):
    format = "files"

    def __init__(
        self,
        folder: OutputFolder,
        destination: Destination | None = None,
        var_names: Sequence[str] = (),
    ) -> None:
        super().__init__(folder, destination, var_names)
        self._listed: dict[str, set[str]] = {}  # the destination's folders, once listed

    def partial_path(self, name: str) -> Path:
        return self.folder.partial_path(name)

    def place(self, fetched: Fetched, stem: str, provenance: Mapping[str, Any] | None) -> FileEntry:
        sha256, size = checked(fetched, provenance)
        final = self.folder.place(
            fetched.path, stem + image_extension(fetched.content_type, fetched.url)
        )
        path = relative(final, self.folder.root)
        if self.destination.remote:
            self.destination.put(final, path)
            final.unlink()
        return FileEntry(path, sha256, size)

    def holds(self, entry: FileEntry) -> bool:
        if self.destination.remote:
            folder, _, name = entry.path.rpartition("/")
            if folder not in self._listed:
                self._listed[folder] = self.destination.listing(folder)
            return name in self._listed[folder]
        return super().holds(entry)
