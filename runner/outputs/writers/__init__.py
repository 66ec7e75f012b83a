"""Writers: where images and records go (``--format``). The engine sees only ``Writer``.

base.py        the seam (Writer, Fetched) and the checks every format makes
files.py       one file per image under images/
shards.py      staging, numbering and per-job recovery shared by the shard formats
webdataset.py  tar shards of KEY.png + KEY.json
parquet.py     parquet shards with an image column as Hugging Face reads it
"""

from collections.abc import Sequence
from pathlib import Path

from runner.errors import UsageError
from runner.outputs import arrow
from runner.outputs.atomic import write_atomic
from runner.outputs.destination import Destination
from runner.outputs.folder import OutputFolder
from runner.outputs.shard_files import SHARDS_DIR, member_of
from runner.outputs.writers.base import Fetched, Writer
from runner.outputs.writers.files import FilesWriter
from runner.outputs.writers.parquet import ParquetWriter
from runner.outputs.writers.shards import ShardWriter
from runner.outputs.writers.webdataset import WebDatasetWriter
from runner.settings import FORMATS
from runner.state.records import read_records

DEFAULT_SHARD_SIZE = 10_000


def claim_format(folder: OutputFolder, format: str) -> None:
    """Note the folder's format on its first run; refuse another one later (a folder holds one
    layout: loose files and shards do not mix)."""
    path = folder.state / "format"
    try:
        held = path.read_text(encoding="utf-8").strip() if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        held = None
    if held is None:  # a folder whose state was lost, or from before formats: what it holds
        held = _format_held(folder)
    if held is not None and held != format:
        raise UsageError(
            f"{folder.root} holds a run in --format {held}; run it again with --format {held}, "
            "or choose another --out for --format " + format
        )
    if held is None:
        write_atomic(path, format + "\n")


def _format_held(folder: OutputFolder) -> str | None:
    shards = folder.root / SHARDS_DIR
    if shards.is_dir():
        for writer in (WebDatasetWriter, ParquetWriter):
            if any(shards.glob("*" + writer.suffix)):
                return writer.format
    for record in read_records(folder.results_path):
        for entry in record.files:
            place = member_of(entry.path)
            if place is None:
                return "files"
            suffix = Path(place[0]).suffix
            formats = (WebDatasetWriter, ParquetWriter)
            return next((w.format for w in formats if w.suffix == suffix), None)
    return None


def open_writer(
    folder: OutputFolder,
    format: str = "files",
    shard_size: int = DEFAULT_SHARD_SIZE,
    destination: Destination | None = None,
    var_names: Sequence[str] = (),
) -> Writer:
    """The writer of ``format`` (one of FORMATS) for ``folder``, putting its files at
    ``destination`` (by default the folder itself); ``var_names``: the manifest's vars."""
    if format == "webdataset":
        return WebDatasetWriter(folder, shard_size, destination, var_names)
    if format == "parquet":
        arrow.parquet()  # before anything is sent
        return ParquetWriter(folder, shard_size, destination, var_names)
    return FilesWriter(folder, destination, var_names)


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMATS",
    "Fetched",
    "FilesWriter",
    "ParquetWriter",
    "ShardWriter",
    "WebDatasetWriter",
    "Writer",
    "claim_format",
    "member_of",
    "open_writer",
]
