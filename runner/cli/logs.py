"""Log output for people (text) and for machines (JSON lines for journald, cron mail, jq)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


# What every LogRecord has: anything else on a record came as ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def json_line(level: str, msg: str, logger: str = "runner.cli", **fields: Any) -> str:
    """One log line as JSON: ts, level, logger, msg, then ``fields`` (counts as numbers)."""
    entry = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "msg": msg,
        **fields,
    }
    return json.dumps(entry, ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's ``extra`` fields (a
    progress line's counts, as numbers), and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(
            (name, value)
            for name, value in vars(record).items()
            if name not in _STANDARD and not name.startswith("_") and name not in entry
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (a program that calls
    ``main`` twice, or a test capturing stderr, never writes to a stream closed since)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def configure_logging(
    verbose: bool = False, fmt: str = "text", console: Console | None = None
) -> None:
    """Log to stderr in the chosen format; quiet aiohttp's access chatter. Each job's
    progress (submitted, done, retried) shows with ``verbose`` only, and so do module names.

    With ``console`` (a terminal showing live progress), text lines go through that rich
    console, which prints them above the progress bars instead of through them."""
    handler: logging.Handler
    if fmt == "json":
        handler = StderrHandler()
        handler.setFormatter(JsonFormatter())
    elif console is not None:
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        handler = RichHandler(
            console=console,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            highlighter=NullHighlighter(),  # no colours on the digits of model names
            log_time_format="[%Y-%m-%d %H:%M:%S]",  # ISO dates: 12/05/26 reads three ways
        )
        handler.setFormatter(
            logging.Formatter("%(name)s: %(message)s" if verbose else "%(message)s")
        )
        if not verbose:  # a terminal shows no line per job: the live view counts them
            handler.addFilter(lambda record: not getattr(record, "per_job", False))
    else:
        handler = StderrHandler()
        where = "%(name)s: " if verbose else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {where}%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # -v adds our own debug lines, never another library's (Pillow's chunk-by-chunk PNG
    # reading, asyncio's selector): those stay at INFO and above.
    root.setLevel(logging.INFO)
    logging.getLogger("runner").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
