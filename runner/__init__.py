"""krea-batch: run thousands of Krea text-to-image jobs from a YAML manifest, resumably.

The Python API is ``await runner.run_batch(manifest, out, ...)``; the CLI is a thin layer on it.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "run_batch"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import runner` stays light for the CLI's quick commands.
    if name == "run_batch":
        from runner.batch import run_batch

        return run_batch
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
