"""pyarrow, which only ``--format parquet`` needs (170 MB of a 230 MB install): an extra,
``parquet``, named with how to install it where it is missing.

Every use of pyarrow imports it through here, so a missing one is a usage error (exit 2)
said before anything is sent, never an ImportError midway or a shard marked damaged.
"""

from __future__ import annotations

from typing import Any

from runner.errors import UsageError

INSTALL = (
    "pip install '.[parquet]' in a clone of krea-batch (or pip install 'pyarrow>=15' beside it)"
)


class MissingPyarrow(UsageError):
    """Parquet shards were asked for, and pyarrow is not installed."""


def parquet(what: str = "--format parquet") -> Any:
    """``pyarrow.parquet``; MissingPyarrow, saying how to install it, when it is not there."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingPyarrow(f"{what} needs pyarrow, which is not installed: {INSTALL}") from exc
    return pq


def pyarrow(what: str = "--format parquet") -> Any:
    """``pyarrow`` itself (see ``parquet``)."""
    parquet(what)
    import pyarrow as pa

    return pa
