"""API keys by name: a short fingerprint of each token, the only form logs and files hold,
and where the user put the key, so that a person can find it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import overload

FINGERPRINT_CHARS = 8


def fingerprint(token: str) -> str:
    """Eight hex digits of the token's SHA-256: tells keys apart, reveals nothing of them."""
    return hashlib.sha256(token.encode()).hexdigest()[:FINGERPRINT_CHARS]


class ApiKey:
    """One key of a pool: its token and its place (the ``index``-th key of ``source``, a
    token file or an environment variable). Small, and its fingerprint is computed when first
    asked for: a pool of 10,000 keys costs little until its keys are used."""

    __slots__ = ("_fingerprint", "index", "source", "token")

    def __init__(
        self, token: str, index: int = 1, source: str | None = None, *, known: str | None = None
    ) -> None:
        self.token = token
        self.index = index
        self.source = source
        self._fingerprint = known  # ``known``: the fingerprint, when the token is not at hand

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.token)
        return self._fingerprint

    @property
    def place(self) -> str | None:
        """``key 2 of keys.txt``: where a person finds it (None: it came from no file)."""
        return None if self.source is None else f"key {self.index} of {self.source}"

    @property
    def label(self) -> str:
        """``key 2 of keys.txt (35a34ba4)``, or ``key 35a34ba4`` for one from no file."""
        place = self.place
        return f"key {self.fingerprint}" if place is None else f"{place} ({self.fingerprint})"

    def __repr__(self) -> str:  # never shows the token
        return f"ApiKey({self.label!r})"


class KeyList(Sequence[ApiKey]):
    """The tokens as keys, numbered from 1 in the order ``source`` gives them; each
    ``ApiKey`` made when asked for, so that 10,000 tokens cost no more than their strings."""

    def __init__(self, tokens: Sequence[str], source: str | None = None) -> None:
        self.tokens = tokens
        self.source = source

    def __len__(self) -> int:
        return len(self.tokens)

    @overload
    def __getitem__(self, index: int) -> ApiKey: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ApiKey]: ...
    def __getitem__(self, index: int | slice) -> ApiKey | Sequence[ApiKey]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return ApiKey(self.tokens[index], index + 1, self.source)
