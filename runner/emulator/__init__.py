"""A Krea-compatible API server for tests, benchmarks and runs without a token."""

from runner.emulator.app import Emulator
from runner.emulator.config import EmulatorConfig, Latency
from runner.emulator.server import RunningEmulator, run_emulator, serve_forever

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "Latency",
    "RunningEmulator",
    "run_emulator",
    "serve_forever",
]
