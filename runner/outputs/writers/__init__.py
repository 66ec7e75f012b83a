"""Writers: where images and records go (``--format``). The engine sees only ``Writer``.

base.py     the seam (Writer, Fetched) and the checks every format makes
files.py    one file per image under images/
"""

from runner.outputs.folder import OutputFolder
from runner.outputs.writers.base import Fetched, Writer
from runner.outputs.writers.files import FilesWriter

FORMATS = ("files",)


def open_writer(folder: OutputFolder, format: str = "files") -> Writer:
    """The writer of ``format`` for ``folder``."""
    return FilesWriter(folder)


__all__ = ["FORMATS", "Fetched", "FilesWriter", "Writer", "open_writer"]
