"""The one parser of whole numbers from outside: flags, variables, columns of a prompts file.

Python's ``int`` takes more than a user means: ``"١٢"`` (Arabic-Indic digits), ``"1_000"``,
``" +7 "``; and ``str.isdigit`` says yes to ``"²"``, which ``int`` then refuses with a
traceback. Here a whole number is ASCII digits, with a sign only where the caller allows a
negative, and a bad one is a UsageError naming where it came from.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from runner.errors import UsageError

MAX_DIGITS = 30  # far past any count, index or seed; int() itself stops at 4,300 with an error
_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")


class NotAWholeNumber(UsageError):
    """``where`` (a flag, a variable, a file and line) holds no usable whole number."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}" if where else reason)


def parse_int(
    text: str,
    where: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    signed: bool = False,
) -> int:
    """The whole number ``text`` holds (surrounding spaces and tabs allowed); ``signed``
    allows a leading ``+`` or ``-``. NotAWholeNumber names ``where`` otherwise."""
    value = text.strip(" \t\r\n")
    shown = repr(value if len(value) <= 40 else value[:40] + "…")
    if not (_SIGNED if signed else _UNSIGNED).fullmatch(value):
        hint = "digits 0-9 only" + ("" if signed or not value.startswith("-") else ", not below 0")
        raise NotAWholeNumber(where, f"{shown} is not a whole number ({hint})")
    if len(value.lstrip("+-").lstrip("0")) > MAX_DIGITS:
        raise NotAWholeNumber(where, f"{shown} is too large")
    number = int(value)
    if minimum is not None and number < minimum:
        raise NotAWholeNumber(where, f"{number} is below the minimum {minimum}")
    if maximum is not None and number > maximum:
        raise NotAWholeNumber(where, f"{number} is above the maximum {maximum}")
    return number


def int_flag(
    *, minimum: int | None = None, maximum: int | None = None, signed: bool = False
) -> Callable[[str], int]:
    """An argparse ``type=`` that parses with ``parse_int`` (argparse names the flag)."""

    def parse(text: str) -> int:
        try:
            return parse_int(text, "", minimum=minimum, maximum=maximum, signed=signed)
        except NotAWholeNumber as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None

    parse.__name__ = "whole number"
    return parse
