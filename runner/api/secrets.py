"""The API token: read from the environment or a file, never from a command line argument."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runner.api.keys import fingerprint
from runner.errors import UsageError
from runner.files import UnusableFile
from runner.textfiles import TextError, env_text, read_piped_text

TOKEN_VARIABLE = "KREA_API_TOKEN"
TOKENS_VARIABLE = "KREA_API_TOKENS"  # several keys, comma-separated: a pool
MAX_TOKEN_BYTES = 64 << 10
log = logging.getLogger(__name__)


def read_token_file(path: str) -> str:
    """The text in ``path`` (surrounding whitespace removed); a UsageError if unusable."""
    try:
        if Path(path).stat().st_mode & 0o077:
            log.warning("the token file %s can be read by other users: chmod 600 %s", path, path)
        # A pipe is fine (--token-file <(pass show krea)); a FIFO nobody writes to reads as
        # empty instead of waiting forever; an endless file is read no further than the limit.
        token = read_piped_text(path, MAX_TOKEN_BYTES).strip()
    except UnusableFile as exc:
        raise UsageError(f"the token file {path} {exc.strerror}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from exc
    except TextError as exc:  # the reason and line only: never a piece of a secret
        raise UsageError(f"the token file {path} is no text file: {exc.detail}") from exc
    if not token:
        raise UsageError(f"the token file {path} is empty: it holds no token")
    return token


EXCLUSIVE = "exclusive"  # after a key in a key file: nobody else submits with that key


def read_tokens_file(path: str) -> list[str]:
    """The tokens in ``path``, one per line (blank lines and ``#`` comments skipped)."""
    return read_keys_file(path)[0]


def read_keys_file(path: str) -> tuple[list[str], frozenset[str]]:
    """The tokens in ``path``, one per line (blank lines and ``#`` comments skipped), and
    the fingerprints of those declared exclusive: ``TOKEN exclusive`` on its line."""
    lines = read_token_file(path).split("\n")
    tokens: list[str] = []
    exclusive: set[str] = set()
    for line in (line.split() for line in lines if not line.lstrip().startswith("#")):
        if not line:
            continue
        if len(line) > 2 or (len(line) == 2 and line[1] != EXCLUSIVE):
            raise UsageError(
                f"the token file {path}: key {len(tokens) + 1} is followed by something other "
                f"than '{EXCLUSIVE}' (the one word a key's line may add; the line is not shown)"
            )
        tokens.append(line[0])
        if len(line) == 2:
            exclusive.add(fingerprint(line[0]))
    if not tokens:
        raise UsageError(f"the token file {path} holds no token")
    return _distinct(tokens, path), frozenset(exclusive)


def find_tokens(token_file: str | None) -> list[str]:
    """Every key of the run: ``--token-file`` (one per line) if given, else $KREA_API_TOKENS
    (comma-separated), else $KREA_API_TOKEN; empty when none is set."""
    return find_keys(token_file)[0]


def find_keys(token_file: str | None) -> tuple[list[str], frozenset[str]]:
    """``find_tokens``, and the fingerprints of the keys the file declares exclusive."""
    if token_file:
        return read_keys_file(token_file)
    return _env_tokens(), frozenset()


def _env_tokens() -> list[str]:
    several = [t.strip() for t in (env_text(os.environ, TOKENS_VARIABLE) or "").split(",")]
    if any(several):
        return _distinct([t for t in several if t], f"${TOKENS_VARIABLE}")
    token = env_text(os.environ, TOKEN_VARIABLE)
    return _distinct([token], f"${TOKEN_VARIABLE}") if token else []


def _distinct(tokens: list[str], where: str) -> list[str]:
    for number, token in enumerate(tokens, 1):
        # A key is visible ASCII; anything else (a zero-width space copied from a web page, a
        # stray byte-order mark) would be sent and refused as a wrong key. Never echoed.
        if not (token.isascii() and token.isprintable()) or " " in token:
            raise UsageError(
                f"{where}: key {number} holds a character no API key has (keys are visible "
                "ASCII): copy it again"
            )
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
