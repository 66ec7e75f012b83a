"""The API token: read from the environment or a file, never from a command line argument."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runner.errors import UsageError

TOKEN_VARIABLE = "KREA_API_TOKEN"
TOKENS_VARIABLE = "KREA_API_TOKENS"  # several keys, comma-separated: a pool
MAX_TOKEN_BYTES = 64 << 10
log = logging.getLogger(__name__)


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed); a UsageError if unusable."""
    try:
        if Path(path).stat().st_mode & 0o077:
            log.warning("the token file %s can be read by other users: chmod 600 %s", path, path)
        # A pipe is fine (--token-file <(pass show krea)); a FIFO nobody writes to reads as
        # empty instead of waiting forever (opened without blocking); an endless file is read
        # no further than the limit.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_TOKEN_BYTES + 1)
        token = data.decode("utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"the token file {path} is not UTF-8 text") from exc
    if len(data) > MAX_TOKEN_BYTES:
        raise UsageError(f"the token file {path} holds more than {MAX_TOKEN_BYTES:,} bytes")
    if not token:
        raise UsageError(f"the token file {path} is empty")
    return token


def read_tokens_file(path: str) -> list[str]:
    """The tokens in ``path``, one per line (blank lines and ``#`` comments skipped)."""
    lines = read_token_file(path).splitlines()
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise UsageError(f"the token file {path} holds no token")
    return _distinct(tokens, path)


def find_tokens(token_file: str | None) -> list[str]:
    """Every key of the run: ``--token-file`` (one per line) if given, else $KREA_API_TOKENS
    (comma-separated), else $KREA_API_TOKEN; empty when none is set."""
    if token_file:
        return read_tokens_file(token_file)
    several = [t.strip() for t in os.environ.get(TOKENS_VARIABLE, "").split(",") if t.strip()]
    if several:
        return _distinct(several, f"${TOKENS_VARIABLE}")
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    return [token] if token else []


def _distinct(tokens: list[str], where: str) -> list[str]:
    unique = list(dict.fromkeys(tokens))
    if len(unique) < len(tokens):
        log.warning("%s names a key more than once: each key is used once", where)
    return unique


def token_source(token_file: str | None) -> str:
    """Where ``find_tokens`` takes the keys from, as a person names it in a message: the
    token file's path, ``$KREA_API_TOKENS`` or ``$KREA_API_TOKEN``."""
    if token_file:
        return token_file
    if any(t.strip() for t in os.environ.get(TOKENS_VARIABLE, "").split(",")):
        return f"${TOKENS_VARIABLE}"
    return f"${TOKEN_VARIABLE}"
