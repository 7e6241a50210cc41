"""The x-colorgate block's field types, each validated with an error that names its path
and the fix: mappings of known keys, names, services, integers, booleans, paths,
variable names and commands."""

from __future__ import annotations

import difflib
import re

from deploy.contract.model import (
    ENV_NAME,
    ROUTE_PATH,
)
from deploy.errors import ContractError


def names(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ContractError(f"{where}: should be a list of service names")


def known(name, services: dict, where: str) -> str:
    if not isinstance(name, str) or name not in services:
        close = difflib.get_close_matches(str(name), list(services), n=1)
        hint = (
            f" (did you mean {close[0]!r}?)"
            if close
            else f": the file's services are {', '.join(services)}"
        )
        raise ContractError(f"{where}: unknown service {name!r}{hint}")
    return name


def keys(value, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise ContractError(f"{where}: should be a mapping")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(allowed)}"
            raise ContractError(f"{where}: unknown key {key!r}: {hint}")
    return value


def integer(value, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContractError(f"{where}: should be a whole number from {low} to {high}")
    return value


def boolean(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ContractError(f"{where}: should be true or false")
    return value


def path(value, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ContractError(f"{where}: must start with / (got {value!r})")
    if not ROUTE_PATH.fullmatch(value):
        raise ContractError(
            f"{where}: {value!r} has characters a path cannot have (spaces, quotes, braces)"
        )
    return value


def variables(value, where: str, example: str, why: str = "") -> tuple[str, ...]:
    """One environment variable name, or a list of them."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(
        isinstance(n, str) and ENV_NAME.fullmatch(n) for n in names
    ):
        raise ContractError(
            f"{where}: should be an environment variable name such as {example}, or a list of them{why}"
        )
    return tuple(names)


def command(value, where: str) -> tuple[str, ...]:
    """A command in the block, written as a service's `command:` is: `$$` is a `$` for the
    shell in the container, and a lone `$` (which compose would expand from the operator's
    environment there) is refused rather than read two ways."""
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        raise ContractError(
            f'{where}: should be a command as a list, such as ["npm", "run", "migrate"]'
        )
    for n, arg in enumerate(value):
        lone = re.search(r"\$\S*", arg.replace("$$", "\0"))
        if lone:
            word = lone.group(0).replace("\0", "$$")
            raise ContractError(
                f"{where}[{n}]: {word!r} has a lone '$': write '${word}' as in a service's command: "
                "($$ reaches the container's shell as $; the block is never expanded from your environment)"
            )
    return tuple(arg.replace("$$", "$") for arg in value)
