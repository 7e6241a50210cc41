"""Reading a compose file and validating its x-colorgate block into an App: every
error is one line naming the path in the file and the fix (see deploy/contract/__init__.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from deploy.contract import blocks, fields
from deploy.contract.model import (
    BLOCK_KEYS,
    COLORS,
    COMPOSE_NAMES,
    DB_NETWORK,
    EDGE_NETWORK,
    LIST,
    MAPPING,
    NUMBER,
    OWN_SERVICES,
    OWN_VOLUMES,
    SERVICE_NAME,
    SERVICE_SHAPES,
    TEXT,
    TOP_SECTIONS,
    App,
)
from deploy.errors import ContractError


def compose_in(directory: Path, drafts: bool = True) -> Path | None:
    """The app's compose file in `directory`: the copy `init` drafted (NAME.colorgate.yml)
    if there is one (and `drafts`), else the first of Compose's own names."""
    names = [f"{Path(n).stem}.colorgate{Path(n).suffix}" for n in COMPOSE_NAMES] * drafts + list(
        COMPOSE_NAMES
    )
    return next((directory / name for name in names if (directory / name).is_file()), None)


def find_file(path: Path, drafts: bool = True) -> Path:
    """A compose file, or the compose file in a directory (see compose_in)."""
    if path.is_dir():
        if found := compose_in(path, drafts):
            return found
        raise ContractError(
            f"no compose file in {path}: expected one of {', '.join(COMPOSE_NAMES)}"
        )
    if not path.is_file():
        raise ContractError(
            f"the app's compose file {path} does not exist: set COLORGATE_APP to your compose file"
        )
    return path


def read_compose(path: Path) -> dict:
    """The compose file as data, or one line naming why it cannot be read."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ContractError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ContractError(
            f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None
    if isinstance(data, dict):
        data = merged(path, data)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("services"), dict)
        or not data["services"]
    ):
        raise ContractError(f"{path} is not a compose file: it has no `services:` mapping")
    return data


_IS = {
    TEXT: lambda v: isinstance(v, str),
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    LIST: lambda v: isinstance(v, list),
    MAPPING: lambda v: isinstance(v, dict),
    "bool": lambda v: isinstance(v, bool),
}
_SAID = {
    TEXT: "text",
    NUMBER: "a number",
    LIST: "a list",
    MAPPING: "a mapping",
    "bool": "true or false",
}


def shapes(data: dict) -> None:
    """Each section and service key Colorgate reads has the shape Compose's specification
    gives it (see model.SERVICE_SHAPES), else one line naming it and what it should be."""
    if not isinstance(data.get("services"), dict) or not data["services"]:
        raise ContractError(
            "services: should be a mapping of the app's services (`services:` then `  web: {image: ...}`)"
        )
    for section in TOP_SECTIONS:
        body = data.get(section)
        if body is not None and not isinstance(body, dict):
            raise ContractError(
                f"{section}: should be a mapping of names (`{section}:` then `  name: {{}}` lines), not a {type(body).__name__}"
            )
    for name, svc in data["services"].items():
        if not isinstance(name, str):
            raise ContractError(f"services.{name}: a service's name is text: quote it ('{name}':)")
        if svc is not None and not isinstance(svc, dict):
            raise ContractError(
                f"services.{name}: should be a mapping of the service's keys (image:, build:, ...), not a {type(svc).__name__}"
            )
        for key, allowed in SERVICE_SHAPES.items():
            value = (svc or {}).get(key)
            if value is not None and not any(_IS[shape](value) for shape in allowed):
                raise ContractError(
                    f"services.{name}.{key}: should be {' or '.join(_SAID[a] for a in allowed)}, not {value!r}"
                )
            if (
                isinstance(value, list)
                and key
                in ("environment", "labels", "profiles", "depends_on", "cap_add", "cap_drop")
                and not all(isinstance(item, str) for item in value)
            ):
                raise ContractError(
                    f"services.{name}.{key}: each item of the list should be text (KEY=value, a name), not "
                    f"{next(item for item in value if not isinstance(item, str))!r}"
                )


# Beside the file, as Compose merges them when it is given no -f (a team's `docker
# compose up` on the server does the same)
OVERRIDE_NAMES = (
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
)


def merged(path: Path, data: dict) -> dict:
    """The app as Compose itself reads it, where the file uses what only Compose resolves
    (`include:`, a service's `extends:`) or has an override file beside it: `docker
    compose config` without interpolation (the `${...}` stay for the settings to fill in
    when Colorgate runs it), paths made absolute. Other files are read as written."""
    overrides = [path.parent / name for name in OVERRIDE_NAMES if (path.parent / name).is_file()]
    extends = any(
        isinstance(svc, dict) and "extends" in svc for svc in (data.get("services") or {}).values()
    )
    if not (overrides or extends or "include" in data):
        return data
    files = [arg for f in (path, *overrides) for arg in ("--file", str(f))]
    cmd = [
        "docker",
        "compose",
        "--project-directory",
        str(path.parent),
        *files,
        "config",
        "--no-interpolate",
        "--format",
        "json",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ContractError(
            f"{path} uses include, extends or an override file, which Compose resolves: install Docker's compose "
            "plugin (`invoke bootstrap`)"
        ) from None
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContractError(
            f"docker compose cannot read {path}{' with ' + ', '.join(o.name for o in overrides) if overrides else ''}: {said}"
        )
    return json.loads(proc.stdout)


def load(path: Path) -> App:
    path = find_file(path)
    return parse(read_compose(path), path)


def parse(data: dict, path: Path = Path("docker-compose.yml")) -> App:
    """Validate the `x-colorgate` block against the file's services. Every error is one
    line that names the path in the block and the fix."""
    shapes(data)
    services: dict = data.get("services") or {}
    block = data.get("x-colorgate")
    if block is None:
        raise ContractError(
            f"{path} has no x-colorgate block: add one (`invoke init --compose {path}` writes a first draft)"
        )
    block = fields.keys(block, BLOCK_KEYS, "x-colorgate")
    _check_names(data, services)
    colored, shared = blocks.roles(block, services)
    routes = blocks.routes(block, services, colored)
    return App(
        file=path,
        services=services,
        colored=tuple(colored),
        shared=tuple(shared),
        routes=tuple(routes),
        health=blocks.health(block, services, colored, routes),
        migrations=blocks.migrations(block, services, colored),
        database=blocks.database(block, services, colored, shared),
        raw=data,
        replicas=blocks.replicas(block),
        secrets=blocks.secrets(block.get("secrets"), services, colored),
    )


def _check_names(data: dict, services: dict) -> None:
    """No service, volume or network takes one of Colorgate's own names."""
    for name in services:
        if name in OWN_SERVICES:
            raise ContractError(
                f"services.{name}: the name {name!r} is Colorgate's own ({', '.join(OWN_SERVICES)}): rename the service"
            )
        if not SERVICE_NAME.fullmatch(str(name)) or str(name).endswith(
            tuple(f"_{c}" for c in COLORS)
        ):
            raise ContractError(
                f"services.{name}: use lowercase letters, digits, '-', '_' and '.', not ending in _blue or _green"
            )
    for volume in data.get("volumes") or {}:
        if volume in OWN_VOLUMES:
            raise ContractError(
                f"volumes.{volume}: the name {volume!r} is one of Colorgate's volumes ({', '.join(OWN_VOLUMES)}): rename it"
            )
    for own in (EDGE_NETWORK, DB_NETWORK):
        if own in (data.get("networks") or {}):
            raise ContractError(
                f"networks.{own}: the name is one of Colorgate's networks: rename it"
            )
