"""The two colors and the names that follow from them."""

from __future__ import annotations

from deploy.errors import ColorgateError

COLORS = ("blue", "green")
APP_ROLES = ("frontend", "backend")


class UnknownColor(ColorgateError):
    pass


def parse_color(value: str) -> str:
    """Return the canonical color for `value` (case and spaces ignored), or raise."""
    color = (value or "").strip().lower()
    if color not in COLORS:
        raise UnknownColor(f"unknown color {value!r}: use one of {', '.join(COLORS)}")
    return color


def other(color: str) -> str:
    """The other color: the candidate when `color` is live."""
    return COLORS[1 - COLORS.index(parse_color(color))]


def services(color: str) -> list[str]:
    """Compose services that make up one color."""
    color = parse_color(color)
    return [f"{role}_{color}" for role in APP_ROLES]


def color_of_service(service: str) -> str | None:
    """`backend_green` -> `green`; services that belong to no color -> None."""
    role, _, color = service.rpartition("_")
    return color if role in APP_ROLES and color in COLORS else None
