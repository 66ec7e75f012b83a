"""API keys by name: a short fingerprint of each token, the only form logs and files hold."""

from __future__ import annotations

import hashlib

FINGERPRINT_CHARS = 8


def fingerprint(token: str) -> str:
    """Eight hex digits of the token's SHA-256: tells keys apart, reveals nothing of them."""
    return hashlib.sha256(token.encode()).hexdigest()[:FINGERPRINT_CHARS]
