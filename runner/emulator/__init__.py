"""A Krea-compatible API server for tests, benchmarks and runs without a token.

Its names are imported on first use: a run against the real API never loads the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.emulator.app import Emulator
    from runner.emulator.config import EmulatorConfig, Latency
    from runner.emulator.server import RunningEmulator, run_emulator, serve_forever

_HOMES = {
    "Emulator": "runner.emulator.app",
    "EmulatorConfig": "runner.emulator.config",
    "Latency": "runner.emulator.config",
    "RunningEmulator": "runner.emulator.server",
    "run_emulator": "runner.emulator.server",
    "serve_forever": "runner.emulator.server",
}

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "Latency",
    "RunningEmulator",
    "run_emulator",
    "serve_forever",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'runner.emulator' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
