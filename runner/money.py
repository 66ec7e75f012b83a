"""Prices and spend: US dollars where Krea publishes them, compute units where that is all.

The two are never added together: a spend is shown as ``$1.20 + 34.5 CU`` when a run mixes
models priced both ways.
"""

from __future__ import annotations

import re

from runner.errors import UsageError


def dollars(usd: float) -> str:
    """``$0.015``, ``$1.235``, ``$12.35``: cents and more precision for small sums."""
    return f"${usd:,.2f}" if usd >= 10 else f"${usd:.4g}"


def spend_text(usd: float, units: float) -> str:
    """A spend in dollars and compute units side by side, ``$0`` when there is none."""
    parts = []
    if usd:
        parts.append(dollars(usd))
    if units:
        parts.append(f"{units:,.1f} CU")
    return " + ".join(parts) or "$0"


_BUDGET = re.compile(r"\s*\$?\s*(\d+(?:\.\d+)?)\s*(usd|\$|cu)?\s*", re.IGNORECASE)


def parse_budget(text: str) -> tuple[float, str]:
    """``25``, ``25usd`` or ``$25`` → (25.0, "usd"); ``500cu`` → (500.0, "cu")."""
    match = _BUDGET.fullmatch(text)
    if not match:
        raise UsageError(
            f"--budget {text!r}: give dollars (25, 25usd, $25) or compute units (500cu)"
        )
    unit = (match.group(2) or "usd").lower()
    return float(match.group(1)), "cu" if unit == "cu" else "usd"
