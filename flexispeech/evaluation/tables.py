"""Markdown tables and percentages, as every report of the package writes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pct(x: float | None) -> str:
    """A rate as a percentage with one decimal ('–' when undefined: None or NaN)."""
    return "–" if x is None or x != x else f"{100 * x:.1f}"  # x != x: NaN of any float type


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: the header, its rule, one line per row (cells through ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
