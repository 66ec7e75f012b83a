"""The emulator's knobs: how fast it is, how much it allows, and how it misbehaves."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.integers import int_flag


@dataclass(frozen=True, slots=True)
class Latency:
    """How long a job takes, in seconds before time scaling.

    ``fixed:S``, ``uniform:A-B`` or ``lognormal:MEDIAN,SIGMA``; ``model`` uses each model's
    published average completion time (10 s where none is published).
    """

    kind: str = "uniform"
    a: float = 1.0
    b: float = 3.0

    @classmethod
    def parse(cls, text: str) -> Latency:
        text = text.strip()
        if text == "model":
            return cls("model", 10.0, 0.0)
        patterns = {
            "fixed": r"fixed:(\d+(?:\.\d+)?)()",
            "uniform": r"uniform:(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)",
            "lognormal": r"lognormal:(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)",
        }
        for kind, pattern in patterns.items():
            match = re.fullmatch(pattern, text, re.ASCII)
            if match:
                a = float(match.group(1))
                b = float(match.group(2) or a)
                if kind == "uniform" and b < a:
                    break
                return cls(kind, a, b)
        raise ValueError(
            f"{text!r} is not a latency: use fixed:S, uniform:A-B, lognormal:MEDIAN,SIGMA or model"
        )

    def sample(self, rng: random.Random, model_average: float | None = None) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return self.a * rng.lognormvariate(0.0, self.b)
        return model_average or self.a


DIALECTS = ("spec", "docs", "map")
# What one account may suffer (--key-fault FINGERPRINT:FAULT): every request answered 429;
# GET /jobs answered 503; every submit's job created and its answer lost (connection dropped).
KEY_FAULTS = ("throttled", "listing-down", "lost-answers")


@dataclass(frozen=True)
class EmulatorConfig:
    """Every knob of the emulator; all off by default, so it behaves like a healthy API."""

    token: str | None = None  # accepted bearer token; None accepts any non-empty token
    # Several accepted tokens: one account each (own jobs, limits, credits, figures).
    tokens: tuple[str, ...] = ()
    seed: int = 0  # seeds all randomness, so a faulty run can be replayed
    latency: Latency = field(default_factory=Latency)
    time_scale: float = 1.0  # multiplies every job duration (0.01: a hundred times faster)
    concurrency_limit: int | None = None  # jobs running at once per account
    overflow: str = "429"  # past the limit: "429" (refuse) or "backlog" (status backlogged)
    rate_limit: float | None = None  # API requests per second; more get 429
    retry_after: float | None = None  # seconds sent in Retry-After with 429s (None: no header)
    failure_rate: float = 0.0  # share of jobs that end failed
    # A share of jobs stays queued this many seconds once it starts (holding its slot), then
    # runs as any other: a straggler. Seconds of the clock, not scaled by time_scale.
    stuck_rate: float = 0.0
    stuck_for: float = 0.0
    error_rate: float = 0.0  # share of API requests answered with a 5xx
    reset_rate: float = 0.0  # share of API requests whose connection is dropped unanswered
    reset_after_create: float = 0.0  # share of submits dropped after the job was created
    malformed_rate: float = 0.0  # share of JSON answers that are cut short
    truncate_rate: float = 0.0  # share of image downloads cut short
    download_bytes_per_s: float | None = None  # throttle for image downloads
    url_ttl: float | None = None  # image URLs stop working this many seconds after issue
    webhook_repeats: int = 1  # deliveries per terminal state (more than 1: duplicates)
    webhook_drop_rate: float = 0.0  # share of webhook deliveries never sent (lost)
    # A delivery the receiver did not take (refused, unreachable: a runner killed and not yet
    # back) is tried again this many times, 1 s, 2 s, 4 s… later (at least once, as Krea's
    # "deliveries may repeat" suggests; its real retry policy is not documented).
    webhook_retries: int = 0
    listing: bool = True  # False: GET /jobs answers 404, as a proxy without the listing would
    credits: float | None = None  # compute units available; None is unlimited
    retired: frozenset[str] = frozenset()  # model ids that answer 410 Gone
    deprecated: frozenset[str] = frozenset()  # model ids sent with Deprecation/Sunset headers
    images_per_job: int = 1
    rtt: float = 0.0  # seconds added to every API request and download: a distant server
    # How answers are shaped: "spec" as the older OpenAPI copy; "docs" as Krea's pages show
    # them today (POST answers without status, nextCursor, result.urls as {type, url}
    # objects); "map" as "docs" but result.urls a map of name → URL.
    dialect: str = "spec"
    # Completed jobs name the seed their image was drawn from (result.seed), as an API that
    # reports the seed it chose would; Krea's documented answers carry none.
    report_seed: bool = False
    # Faults of one account, by its token's fingerprint: (fingerprint, fault) pairs, a fault
    # being one of KEY_FAULTS.
    key_faults: frozenset[tuple[str, str]] = frozenset()

    def faults_of(self, label: str) -> frozenset[str]:
        """The faults of the account whose token has the fingerprint ``label``."""
        return frozenset(fault for key, fault in self.key_faults if key == label)

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        """The tokens that reach an account (none: any non-empty token reaches the one)."""
        if self.tokens:
            return self.tokens
        return () if self.token is None else (self.token,)

    def __post_init__(self) -> None:
        for name in (
            "failure_rate",
            "stuck_rate",
            "error_rate",
            "reset_rate",
            "reset_after_create",
            "malformed_rate",
            "truncate_rate",
            "webhook_drop_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {self.dialect!r}")
        if self.overflow not in ("429", "backlog"):
            raise ValueError(f"overflow must be '429' or 'backlog', not {self.overflow!r}")
        if self.rtt < 0 or self.stuck_for < 0:
            raise ValueError("rtt and stuck_for must be zero or above")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be above zero")
        if self.images_per_job < 1 or self.webhook_repeats < 1:
            raise ValueError("images_per_job and webhook_repeats are at least 1")
        if self.webhook_retries < 0:
            raise ValueError("webhook_retries is zero or more")
        for _, fault in self.key_faults:
            if fault not in KEY_FAULTS:
                raise ValueError(f"{fault!r} is no key fault: use {', '.join(KEY_FAULTS)}")


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"{text!r}: use on or off")
    return text == "on"


def _key_faults(text: str) -> frozenset[tuple[str, str]]:
    pairs = set()
    for item in (part.strip() for part in text.split(",")):
        key, colon, fault = item.partition(":")
        if not item:
            continue
        if not colon or not key:
            raise ValueError(f"{item!r}: use FINGERPRINT:FAULT")
        pairs.add((key.strip(), fault.strip()))
    return frozenset(pairs)


def _models(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


# (flag, field, parser, help) for `krea-batch serve` and `run --emulator-*`.
FLAGS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    (
        "--latency",
        "latency",
        Latency.parse,
        "fixed:S, uniform:A-B, lognormal:MEDIAN,SIGMA or model",
    ),
    ("--time-scale", "time_scale", float, "multiply job durations (0.01 is 100x faster)"),
    ("--concurrency-limit", "concurrency_limit", int_flag(), "jobs the account may run at once"),
    ("--overflow", "overflow", str, "past the limit: 429 (refuse) or backlog"),
    ("--rate-limit", "rate_limit", float, "API requests per second before 429"),
    ("--retry-after", "retry_after", float, "Retry-After seconds sent with 429s"),
    ("--failure-rate", "failure_rate", float, "share of jobs that end failed (0-1)"),
    ("--stuck-rate", "stuck_rate", float, "share of jobs left queued for --stuck-for (0-1)"),
    ("--stuck-for", "stuck_for", float, "seconds a stuck job stays queued before it runs"),
    ("--error-rate", "error_rate", float, "share of API requests answered 5xx"),
    ("--reset-rate", "reset_rate", float, "share of API requests whose connection drops"),
    (
        "--reset-after-create",
        "reset_after_create",
        float,
        "share of submits dropped after the job was created",
    ),
    ("--malformed-rate", "malformed_rate", float, "share of JSON answers cut short"),
    ("--truncate-rate", "truncate_rate", float, "share of image downloads cut short"),
    ("--download-rate", "download_bytes_per_s", float, "image download bytes per second"),
    ("--url-ttl", "url_ttl", float, "image URLs expire after this many seconds"),
    ("--webhook-repeats", "webhook_repeats", int_flag(), "deliveries of each webhook"),
    ("--webhook-drop-rate", "webhook_drop_rate", float, "share of webhook deliveries lost"),
    (
        "--webhook-retries",
        "webhook_retries",
        int_flag(),
        "tries again of a delivery not taken, 1 s, 2 s, 4 s… apart",
    ),
    ("--listing", "listing", _on_off, "on, or off: GET /jobs answers 404"),
    ("--credits", "credits", float, "compute units available (402 after)"),
    ("--retired", "retired", _models, "comma-separated model ids that answer 410"),
    ("--deprecated", "deprecated", _models, "comma-separated model ids sent with Sunset"),
    ("--images-per-job", "images_per_job", int_flag(), "result URLs per job"),
    ("--rtt", "rtt", float, "seconds of round trip added to every request and download"),
    ("--dialect", "dialect", str, "answer shapes: spec, docs (Krea's pages today) or map"),
    ("--report-seed", "report_seed", _on_off, "on: completed jobs name their seed (result.seed)"),
    (
        "--key-fault",
        "key_faults",
        _key_faults,
        "FINGERPRINT:FAULT,…: one account's fault: throttled (429 always), listing-down "
        "(GET /jobs 503), lost-answers (every submit's answer lost after its job is made)",
    ),
    ("--seed", "seed", int_flag(signed=True), "seed for all injected randomness"),
)


def config_from_flags(values: dict[str, Any], tokens: tuple[str, ...] = ()) -> EmulatorConfig:
    """An EmulatorConfig from parsed flag values keyed by field name (None: default); each
    of ``tokens`` is an account of its own (none: any token is accepted)."""
    given = {name: value for name, value in values.items() if value is not None}
    return EmulatorConfig(tokens=tokens, **given)
