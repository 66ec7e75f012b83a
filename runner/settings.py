"""Run settings (the manifest's ``run:`` block and the CLI flags) and their text formats."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from runner.errors import UsageError
from runner.naming import DEFAULT_TEMPLATE, check_template

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$", re.ASCII)
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.ASCII
)
_PER_SECONDS = {
    None: 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``2``, ``2.5``, ``"500ms"``, ``"2s"``, ``"5m"`` or ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (like 2s, 500ms, 5m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (like 2s, 500ms, 5m)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be above zero")
    return seconds


def parse_rate(value: Any) -> float:
    """Requests per second from ``2``, ``"2/s"``, ``"120/min"`` or ``"1000/h"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a rate (like 2/s, 120/min)")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        match = _RATE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a rate (like 2/s, 120/min)")
        rate = float(match.group(1)) / _PER_SECONDS[match.group(2)]
    if rate <= 0:
        raise ValueError(f"{value!r} must be above zero")
    return rate


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(value: Any) -> int:
    """Bytes from ``100000000``, ``"100MB"``, ``"1.5GB"`` or ``"500kb"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (like 100MB)")
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (like 100MB, 2GB)")
    unit = match.group(2).lower() if match.group(2) else None
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"{value!r} must be above zero")
    return size


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a whole number of at least 0")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a whole number of at least 1")
    return value


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How a batch runs; every field is both a ``run:`` key and a CLI flag."""

    concurrency: int = 8  # jobs in flight at once
    submit_concurrency: int = 32  # POSTs in flight at most (runner.api.limiter.SubmitWindow)
    rate_limit: float = 10.0  # API requests per second, polls included
    poll_interval: float = 2.0  # seconds between polls of one job (Krea asks for 2–5 s)
    webhook_poll_interval: float = 30.0  # with webhooks: polls are a safety net this often
    # list: one GET /jobs pass for all jobs a tick; job: a GET each; auto: a GET each for
    # jobs that end within a few intervals when the request rate allows, else the listing
    poll_mode: str = "auto"
    max_attempts: int = 3  # submissions of a job whose remote run failed
    max_jobs: int = 100_000  # a manifest expanding to more is surely a mistake
    job_timeout: float = 3 * 3600.0  # give up on a job that has not ended (platform: 2 h max)
    # A job still queued or running past max(straggler_after, 2 × its model's p90 as this run
    # measured it) is cancelled, read back cancelled, and sent again (runner.engine.latency);
    # None: the measured bound alone. At most straggler_resends times a job (0: never).
    straggler_after: float | None = None
    straggler_resends: int = 2
    lost_answer_wait: float = 1.0  # after a POST's answer is lost, wait before looking for its job
    max_image_bytes: int = 100_000_000  # a download declaring or streaming more fails softly
    max_retry_after: float = 120.0  # a longer Retry-After is clamped to this (and logged)
    name_template: str = DEFAULT_TEMPLATE  # image file names under images/ (runner.naming)
    format: str = "files"  # files | webdataset | parquet (runner.outputs.writers)
    shard_size: int = 10_000  # samples per shard (webdataset and parquet)

    def merged(self, overrides: dict[str, Any]) -> RunSettings:
        """A copy with the non-None ``overrides`` parsed and applied."""
        return replace(
            self, **parse_settings({k: v for k, v in overrides.items() if v is not None})
        )


def _name_template(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a text like '{{model}}/{{key}}'")
    try:
        check_template(value)
    except UsageError as exc:
        raise ValueError(str(exc)) from exc
    return value


def _poll_mode(value: Any) -> str:
    if value not in POLL_MODES:
        raise ValueError(f"{value!r} is not a poll mode: use {' or '.join(POLL_MODES)}")
    return str(value)


def _format(value: Any) -> str:
    if value not in FORMATS:
        raise ValueError(f"{value!r} is not an output format: use {', '.join(FORMATS)}")
    return str(value)


POLL_MODES = ("auto", "list", "job")
FORMATS = ("files", "webdataset", "parquet")
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "concurrency": _positive_int,
    "submit_concurrency": _positive_int,
    "rate_limit": parse_rate,
    "poll_interval": parse_duration,
    "poll_mode": _poll_mode,
    "webhook_poll_interval": parse_duration,
    "max_attempts": _positive_int,
    "max_jobs": _positive_int,
    "job_timeout": parse_duration,
    "straggler_after": parse_duration,
    "straggler_resends": _whole,
    "lost_answer_wait": parse_duration,
    "max_image_bytes": parse_size,
    "max_retry_after": parse_duration,
    "name_template": _name_template,
    "format": _format,
    "shard_size": _positive_int,
}
SETTING_NAMES = tuple(f.name for f in fields(RunSettings))


@dataclass(frozen=True, slots=True)
class SettingFlag:
    """How a run setting appears on the command line (``--`` and its name with dashes)."""

    metavar: str
    help: str  # ``{default}`` is replaced by the default as the help shows it
    whole: bool = False  # a whole number, checked by argparse

    def text(self, name: str) -> str:
        value = getattr(RunSettings(), name)
        shown = f"{value:g}" if isinstance(value, int | float) else str(value)
        return self.help.format(default=shown)


SETTING_FLAGS: dict[str, SettingFlag] = {
    "concurrency": SettingFlag("N", "jobs at the server at once (default: {default})", True),
    "submit_concurrency": SettingFlag(
        "N",
        "POSTs in flight at most, when POSTs are slow (default {default}; 1 after a lost answer)",
        True,
    ),
    "rate_limit": SettingFlag(
        "R", "API requests per second: 2, 2/s, 120/min (default: {default}/s)"
    ),
    "poll_interval": SettingFlag("S", "seconds between polls of a job (default: {default} s)"),
    "webhook_poll_interval": SettingFlag(
        "S", "with webhooks, seconds between safety-net looks at a job (default: {default} s)"
    ),
    "poll_mode": SettingFlag(
        "{auto,list,job}",
        "list: one GET /jobs pass a tick covers every job in flight; job: one GET "
        "per job; auto: one GET per job while jobs end within a few poll intervals and the "
        "request rate has room for it, else the listing (default: {default})",
    ),
    "max_attempts": SettingFlag(
        "N", "submissions of a job whose run fails (default: {default})", True
    ),
    "max_jobs": SettingFlag("N", "cap on the expanded job count (default: {default})", True),
    "job_timeout": SettingFlag("S", "give up on a job after this long (default: {default} s)"),
    "straggler_after": SettingFlag(
        "S",
        "a job still queued or running after max(S, 2 × its model's p90 in this run) is a "
        "straggler: cancelled, read back cancelled (unbilled), and sent again (default: the "
        "measured bound alone)",
    ),
    "straggler_resends": SettingFlag(
        "N", "stragglers of one job sent again, at most; 0: never (default: {default})", True
    ),
    "lost_answer_wait": SettingFlag(
        "S",
        "after a POST's answer is lost, wait this long before looking for its job "
        "(default: {default} s)",
    ),
    "max_image_bytes": SettingFlag(
        "SIZE",
        "refuse a downloaded image larger than this (default: 100MB); the job is kept for later",
    ),
    "max_retry_after": SettingFlag(
        "S", "wait at most this long when the server asks to retry later (default: {default} s)"
    ),
    "name_template": SettingFlag(
        "T", "image file names, e.g. '{{model}}/{{key}}' or '{{name}}/{{index:05d}}'"
    ),
    "format": SettingFlag(
        "{files,webdataset,parquet}",
        "files: an image file each under images/; webdataset: tar shards; parquet: parquet "
        "shards (default: {default})",
    ),
    "shard_size": SettingFlag(
        "N", "samples per webdataset or parquet shard (default: {default})", True
    ),
}


def parse_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Parse raw values by setting name; raises KeyError or ValueError naming the bad one."""
    parsed = {}
    for name, value in raw.items():
        if name not in _PARSERS:
            raise KeyError(name)
        parsed[name] = _PARSERS[name](value)
    return parsed


def parse_deadline(text: str, now: datetime | None = None) -> float:
    """Epoch seconds from ``06:30`` (its next occurrence, local time) or an ISO 8601 time."""
    now = now or datetime.now().astimezone()
    clock = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", text, re.ASCII)
    if clock:
        hour, minute, second = int(clock.group(1)), int(clock.group(2)), int(clock.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"{text!r} is not a time of day")
        moment = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if moment <= now:
            moment += timedelta(days=1)
        return moment.timestamp()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a deadline: use HH:MM or 2026-11-25T06:30") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a naive time is local time
    if moment <= now:
        raise ValueError(f"the deadline {text} has already passed")
    return moment.timestamp()
