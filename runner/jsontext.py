"""JSON from outside (API answers, webhook bodies, files a user or a crash left): parsed so
that any text, nested however deep, is a value or a ``json.JSONDecodeError``."""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser reported as a decode error (it
    raises RecursionError, which no caller expects from bad input)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
