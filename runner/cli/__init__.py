"""The ``krea-batch`` command line: the edge where a person meets the runner.

main.py      arguments, logging and exit codes; one function per command
closing.py   what a run says when it ends, as text or JSON lines
progress.py  the live bars on a terminal, progress lines elsewhere
logs.py      log lines as text or JSON
status.py    ``krea-batch status``: what an output folder holds, from its journal
views.py     text views of a plan and of the catalog
"""

from runner.cli.main import main

__all__ = ["main"]
