"""The exit codes of krea-batch, in one place (cron jobs and CI scripts branch on them)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # every job done
    FAILED = 1  # some jobs failed or ended ambiguous
    USAGE = 2  # a bad manifest, flag or folder: nothing was sent
    STOPPED = 3  # interrupted, a deadline or budget reached, jobs left for the next run
    FATAL = 4  # authentication or credits: the API refused to go on
