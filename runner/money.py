"""Prices and spend: US dollars where Krea publishes them, compute units where that is all.

The two are never added together: a spend is shown as ``$1.20 + 34.5 CU`` when a run mixes
models priced both ways.
"""

from __future__ import annotations

import re

from runner.errors import UsageError


def dollars(usd: float) -> str:
    """A price: ``$0.065``, ``$0.007``, ``$4.20``, ``$12.35`` (cents at least, up to four
    significant digits below $10, where prices per image live)."""
    if usd >= 10:
        return f"${usd:,.2f}"
    text = f"{usd:.4g}"
    if "e" in text or len(text.partition(".")[2]) < 2:
        text = f"{usd:.2f}" if usd >= 0.01 or usd == 0 else f"{usd:.4f}".rstrip("0")
    return f"${text}"


def spent(usd: float) -> str:
    """A spend: ``$4.20``, ``$0.55``, ``$1,234.50``; more digits only below a cent (``$0.007``)."""
    return f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else f"${usd:.2g}"


def spend_text(usd: float, units: float) -> str:
    """A spend in dollars and compute units side by side, ``$0`` when there is none."""
    parts = []
    if usd:
        parts.append(spent(usd))
    if units:
        parts.append(f"{units:,.1f} CU")
    return " + ".join(parts) or "$0"


_BUDGET = re.compile(r"\s*\$?\s*(\d+(?:\.\d+)?)\s*(usd|\$|cu)?\s*", re.IGNORECASE | re.ASCII)


def parse_budget(text: str) -> tuple[float, str]:
    """``25``, ``25usd`` or ``$25`` → (25.0, "usd"); ``500cu`` → (500.0, "cu")."""
    match = _BUDGET.fullmatch(text)
    if not match:
        raise UsageError(
            f"--budget {text!r}: give dollars (25, 25usd, $25) or compute units (500cu)"
        )
    unit = (match.group(2) or "usd").lower()
    return float(match.group(1)), "cu" if unit == "cu" else "usd"
