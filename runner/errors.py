"""The exception hierarchy of krea-batch.

    RunnerError                      anything the CLI turns into a message instead of a traceback
    ├── UsageError                   bad CLI input or settings (exit code 2)
    │   └── ManifestError            a manifest problem, with its file, YAML path and line
    │       └── ManifestProblems     several of them, said together (the first is its own)
    ├── DiskError                    the output folder cannot be written mid-run (full, read-only)
    ├── WouldPayTwice                the journal refused a second POST of an unsettled job
    └── ApiError                     the API (or the emulator) answered something unusable
        ├── TransientApiError        worth retrying: network trouble, 5xx, 429 (retry_after)
        ├── AmbiguousSubmit          a POST went out and its answer was lost: a paid job may
        │                            exist, so it is never just sent again (see engine.submitter)
        ├── PermanentApiError        this job cannot succeed: 400, 404, 410, malformed bodies
        │   ├── ExpiredUrl           an image URL stopped working: fetch the job for a fresh one
        │   └── BadImage             what a result URL served is not an image we can open
        └── FatalApiError            no job can succeed: 401, 402; stop submitting

Third-party exceptions (aiohttp, yaml, jsonschema) are translated into these at the module
that calls the library, and nowhere else.
"""

from __future__ import annotations

import errno


class RunnerError(Exception):
    """Base of every error krea-batch reports to its user."""


class UsageError(RunnerError):
    """The user asked for something impossible; the CLI exits with code 2."""


class DestinationError(OSError):
    """A remote destination (an fsspec URL) refused a file or could not be reached."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"{url}: {cause}")
        self.url = url
        self.cause = cause


class DiskError(RunnerError):
    """Writing to the output folder failed (no space, read-only, I/O error): stop the run."""

    def __init__(self, folder: str, error: OSError) -> None:
        self.folder = folder
        self.error = error
        code = errno.errorcode.get(error.errno or 0)
        cause = f"{code} {error.strerror}" if code and error.strerror else str(error)
        if isinstance(error, DestinationError):
            folder, cause = error.url, error.cause
        super().__init__(f"cannot write to {folder}: {cause}")

    @property
    def full(self) -> bool:
        """The disk (or the user's quota) is full: freeing space is what helps."""
        return self.error.errno in (errno.ENOSPC, errno.EDQUOT)

    def advice(self) -> str:
        """What to do, for this cause (pure)."""
        if isinstance(self.error, DestinationError):
            return "run the same command again once it can be reached (it resumes)"
        match self.error.errno:
            case errno.ENOSPC | errno.EDQUOT:
                return "free some space and run the same command again"
            case errno.EACCES | errno.EPERM:
                return "give this user write access to it and run the same command again"
            case errno.EROFS:
                return "it is on a read-only file system: remount it or choose another --out"
            case errno.ENOENT:
                return (
                    "a folder of the output was removed while the run went on: run the same "
                    "command again (it resumes)"
                )
            case _:
                return "run the same command again once it can be written (it resumes)"


class ManifestError(UsageError):
    """A manifest problem located by file, path in the document (``jobs[2].width``) and line."""

    def __init__(
        self,
        message: str,
        *,
        file: str = "",
        path: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if where and self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = f"{where}: " if where else ""
        subject = f"{self.path}: " if self.path else ""
        return f"{prefix}{subject}{self.message}"


class ManifestProblems(ManifestError):
    """Every problem found in a manifest (up to a bound), each on a line of its own; its
    message, path and line are the first one's."""

    def __init__(self, problems: list[ManifestError], bounded: bool = False) -> None:
        self.problems = tuple(problems)
        self.bounded = bounded  # stopped at the bound: more may follow once these are fixed
        first = problems[0]
        super().__init__(
            first.message, file=first.file, path=first.path, line=first.line, column=first.column
        )

    def __str__(self) -> str:
        many = f"the first {len(self.problems)}" if self.bounded else len(self.problems)
        lines = [f"{many} problems in {self.file or 'the manifest'}:"]
        lines += [f"  {ManifestError.__str__(problem)}" for problem in self.problems]
        if self.bounded:
            lines.append("  … and maybe more: fix these and plan again")
        return "\n".join(lines)


class ApiError(RunnerError):
    """The server's answer could not be used; ``status`` is the HTTP status if there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TransientApiError(ApiError):
    """Worth trying again later.

    ``retry_after`` is the server's hint in seconds, if any; ``overload`` says the account runs
    as many jobs as it may (429 "maximum number of concurrent jobs"), as opposed to a request
    rate limit or an outage.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        overload: bool = False,
    ) -> None:
        self.retry_after = retry_after
        self.overload = overload
        super().__init__(message, status=status)


class AmbiguousSubmit(ApiError):
    """A submit reached the server but its answer was lost or unusable.

    ``created`` is True when the server did answer 2xx (the job exists for sure, its id is
    unreadable), False when nothing tells whether it was created (reset, timeout, 5xx).
    """

    def __init__(self, message: str, *, status: int | None = None, created: bool = False) -> None:
        self.created = created
        super().__init__(message, status=status)


class PermanentApiError(ApiError):
    """This job will not succeed by retrying it (400, 404, 410, a malformed answer)."""


class BadImage(PermanentApiError):
    """A downloaded result is not an image Pillow opens (an HTML page, a truncated file)."""


class ExpiredUrl(PermanentApiError):
    """An image URL no longer works (401, 403, 404, 410): fetch the job again for a fresh one."""


class FatalApiError(ApiError):
    """No job can succeed (401 not authenticated, 402 out of credits): stop submitting."""


class WouldPayTwice(RunnerError):
    """A POST was about to go out while an earlier one of the same job is unsettled.

    Raised by the journal before it writes the line, so the POST is never sent: a bug guard.
    """

    def __init__(self, key: str) -> None:
        super().__init__(
            f"refused to submit {key} again: an earlier submit of it may hold a job "
            "(pending, running or ambiguous)"
        )
