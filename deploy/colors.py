"""The two colors and the names that follow from them."""

from __future__ import annotations

from deploy.errors import UnknownColor

COLORS = ("blue", "green")


def parse_color(value: str) -> str:
    """Return the canonical color for `value` (case and spaces ignored), or raise."""
    color = (value or "").strip().lower()
    if color not in COLORS:
        raise UnknownColor(f"unknown color {value!r}: use one of {', '.join(COLORS)}")
    return color


def other(color: str) -> str:
    """The other color: the candidate when `color` is live."""
    return COLORS[1 - COLORS.index(parse_color(color))]
