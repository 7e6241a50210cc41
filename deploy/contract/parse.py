"""Reading a compose file and validating its x-colorgate block into an App: every
error is one line naming the path in the file and the fix (see deploy/contract/__init__.py)."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
from pathlib import Path

import yaml

from deploy.contract.model import (
    LIST,
    MAPPING,
    NUMBER,
    SERVICE_SHAPES,
    TEXT,
    TOP_SECTIONS,
    BLOCK_KEYS,
    COLORED_KEYS,
    COLORS,
    COMPOSE_NAMES,
    DATABASE_KEYS,
    DB_NETWORK,
    EDGE_NETWORK,
    ENV_NAME,
    HEALTH_KEYS,
    MIGRATION_KEYS,
    OWN_SERVICES,
    DATABASE_PARTS,
    DATABASE_SCHEMES,
    OWN_VOLUMES,
    ROUTE_ANALYSIS_KEYS,
    ROUTE_KEYS,
    ROUTE_PATH,
    SECRET_KEYS,
    SECRET_NAME,
    SECURITY_HEADERS,
    SERVICE_NAME,
    SIZE,
    App,
    Database,
    Health,
    Migrations,
    Route,
    Secret,
    networks_of,
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


def _names(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ContractError(f"{where}: should be a list of service names")


def _known(name, services: dict, where: str) -> str:
    if not isinstance(name, str) or name not in services:
        close = difflib.get_close_matches(str(name), list(services), n=1)
        hint = (
            f" (did you mean {close[0]!r}?)"
            if close
            else f": the file's services are {', '.join(services)}"
        )
        raise ContractError(f"{where}: unknown service {name!r}{hint}")
    return name


def _keys(value, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise ContractError(f"{where}: should be a mapping")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(allowed)}"
            raise ContractError(f"{where}: unknown key {key!r}: {hint}")
    return value


def _int(value, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContractError(f"{where}: should be a whole number from {low} to {high}")
    return value


def _app_headers(raw, where: str) -> tuple[str, ...]:
    """Security headers the app sends itself on a route (any case), by their canonical names."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(h, str) for h in raw):
        raise ContractError(
            f"{where}: should be a list of header names, such as [Content-Security-Policy]"
        )
    known = {name.lower(): name for name in SECURITY_HEADERS}
    for header in raw:
        if header.lower() not in known:
            raise ContractError(
                f"{where}: {header!r} is not a header the edge sets: name one of {', '.join(SECURITY_HEADERS)}"
            )
    return tuple(dict.fromkeys(known[h.lower()] for h in raw))


def _route_analysis(raw, where: str) -> dict:
    """A route's own analysis bounds: {max_error_ratio: 0-1, max_p95_ms: 1-600000}, each optional."""
    if raw is None:
        return {}
    raw = _keys(raw, ROUTE_ANALYSIS_KEYS, where)
    out = {}
    if "max_error_ratio" in raw:
        ratio = raw["max_error_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ContractError(
                f"{where}.max_error_ratio: should be a share from 0 to 1, such as 0.05 for 5%"
            )
        out["max_error_ratio"] = float(ratio)
    if "max_p95_ms" in raw:
        out["max_p95_ms"] = _int(raw["max_p95_ms"], f"{where}.max_p95_ms", 1, 600_000)
    return out


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ContractError(f"{where}: should be true or false")
    return value


def _path(value, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ContractError(f"{where}: must start with / (got {value!r})")
    if not ROUTE_PATH.fullmatch(value):
        raise ContractError(
            f"{where}: {value!r} has characters a path cannot have (spaces, quotes, braces)"
        )
    return value


def _variables(value, where: str, example: str, why: str = "") -> tuple[str, ...]:
    """One environment variable name, or a list of them."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(
        isinstance(n, str) and ENV_NAME.fullmatch(n) for n in names
    ):
        raise ContractError(
            f"{where}: should be an environment variable name such as {example}, or a list of them{why}"
        )
    return tuple(names)


def _command(value, where: str) -> tuple[str, ...]:
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
    block = _keys(block, BLOCK_KEYS, "x-colorgate")
    _check_names(data, services)
    colored, shared = _roles(block, services)
    routes = _routes(block, services, colored)
    return App(
        file=path,
        services=services,
        colored=tuple(colored),
        shared=tuple(shared),
        routes=tuple(routes),
        health=_health(block, services, colored, routes),
        migrations=_migrations(block, services, colored),
        database=_database(block, services, colored, shared),
        raw=data,
        replicas=_replicas(block),
        secrets=_secrets(block.get("secrets"), services, colored),
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


def _roles(block: dict, services: dict) -> tuple[list[str], list[str]]:
    """The colored and the shared services: every service one of them, and what each may depend on."""
    colored = [
        _known(n, services, f"x-colorgate.colored[{i}]")
        for i, n in enumerate(_names(block.get("colored"), "x-colorgate.colored"))
    ]
    shared = [
        _known(n, services, f"x-colorgate.shared[{i}]")
        for i, n in enumerate(_names(block.get("shared"), "x-colorgate.shared"))
    ]
    if not colored:
        raise ContractError(
            "x-colorgate.colored: name at least one service to release in two colors"
        )
    both = sorted(set(colored) & set(shared))
    if both:
        raise ContractError(
            f"x-colorgate: {both[0]!r} is both colored and shared: a service is one or the other"
        )
    undeclared = [n for n in services if n not in colored and n not in shared]
    if undeclared:
        raise ContractError(
            f"x-colorgate: service {undeclared[0]!r} is neither colored nor shared: add it to one of them"
        )
    for name in colored:
        svc = services[name] or {}
        if svc.get("network_mode") == "host":
            raise ContractError(
                f"services.{name}: a colored service cannot use the host's network (its two copies would share "
                "its ports): remove `network_mode: host` (the edge routes to it)"
            )
        for dep in svc.get("depends_on") or {}:
            if dep not in services:
                raise ContractError(f"services.{name}.depends_on: unknown service {dep!r}")
    for name in shared:
        for dep in (services[name] or {}).get("depends_on") or {}:
            if dep in colored:
                raise ContractError(
                    f"services.{name}.depends_on: a shared service cannot depend on the colored {dep!r}"
                )
    return colored, shared


def _routes(block: dict, services: dict, colored: list[str]) -> list[Route]:
    routes = []
    raw_routes = block.get("routes") or []
    if not isinstance(raw_routes, list):
        raise ContractError("x-colorgate.routes: should be a list of {path, to: service:port}")
    for i, raw in enumerate(raw_routes):
        where = f"x-colorgate.routes[{i}]"
        raw = _keys(raw, ROUTE_KEYS, where)
        path_ = _path(raw.get("path"), f"{where}.path")
        target = raw.get("to")
        if not isinstance(target, str) or not re.fullmatch(r"[^:\s]+:\d+", target):
            raise ContractError(
                f"{where}.to: should be service:port, such as api:3000 (got {target!r})"
            )
        service, port = target.rsplit(":", 1)
        _known(service, services, f"{where}.to")
        if service not in colored:
            raise ContractError(
                f"{where}: service {service!r} is not colored: route only to colored services"
            )
        routes.append(
            Route(
                path=path_,
                service=service,
                port=_int(int(port), f"{where}.to", 1, 65535),
                websocket=_bool(raw.get("websocket", False), f"{where}.websocket"),
                buffering=_bool(raw.get("buffering", True), f"{where}.buffering"),
                timeout=_int(raw.get("timeout", 60), f"{where}.timeout", 1, 86400),
                body_size=_size(raw.get("body_size", "10m"), f"{where}.body_size"),
                **_route_analysis(raw.get("analysis"), f"{where}.analysis"),
                app_headers=_app_headers(raw.get("app_headers"), f"{where}.app_headers"),
            )
        )
    if not routes:
        raise ContractError(
            "x-colorgate.routes: add at least one route, such as {path: /, to: web:5000}"
        )
    paths = [r.path for r in routes]
    dup = next((p for p in paths if paths.count(p) > 1), None)
    if dup:
        raise ContractError(f"x-colorgate.routes: the path {dup!r} is routed twice: keep one")
    return routes


def _health(
    block: dict, services: dict, colored: list[str], routes: list[Route]
) -> dict[str, Health]:
    health: dict[str, Health] = {}
    raw_health = block.get("health") or {}
    if not isinstance(raw_health, dict):
        raise ContractError(
            "x-colorgate.health: should map each routed service to its check, such as {api: {path: /health}}"
        )
    for service, raw in raw_health.items():
        where = f"x-colorgate.health.{service}"
        _known(service, services, where)
        if service not in colored:
            raise ContractError(
                f"{where}: service {service!r} is not colored: health checks are for the colored services"
            )
        raw = _keys({"path": raw} if isinstance(raw, str) else raw, HEALTH_KEYS, where)
        default_port = next((r.port for r in routes if r.service == service), None)
        if "port" not in raw and default_port is None:
            raise ContractError(
                f"{where}.port: {service!r} has no route, so name the port its health check answers on"
            )
        expected = raw.get("json") or {}
        if not isinstance(expected, dict) or not all(isinstance(k, str) for k in expected):
            raise ContractError(
                f"{where}.json: should map a JSON field to the value it must have, such as {{status: ok}}"
            )
        contains = raw.get("contains", "")
        if not isinstance(contains, str):
            raise ContractError(f"{where}.contains: should be text the body must contain")
        health[service] = Health(
            service=service,
            path=_path(raw.get("path"), f"{where}.path"),
            port=_int(raw.get("port", default_port), f"{where}.port", 1, 65535),
            status=_int(raw.get("status", 200), f"{where}.status", 100, 599),
            json=tuple(
                (k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in expected.items()
            ),
            contains=contains,
            timeout=_int(raw.get("timeout", 5), f"{where}.timeout", 1, 300),
        )
    missing = [s for s in dict.fromkeys(r.service for r in routes) if s not in health]
    if missing:
        raise ContractError(
            f"x-colorgate.health: routed service {missing[0]!r} has no health check: add {{path: /health}} for it"
        )
    return health


def _migrations(block: dict, services: dict, colored: list[str]) -> Migrations | None:
    if block.get("migrations") is None:
        return None
    raw = _keys(block["migrations"], MIGRATION_KEYS, "x-colorgate.migrations")
    service = _known(raw.get("service"), services, "x-colorgate.migrations.service")
    if service not in colored:
        raise ContractError(
            f"x-colorgate.migrations.service: {service!r} is not colored: migrations run in a colored service's candidate image"
        )
    return Migrations(
        service,
        _command(raw.get("command"), "x-colorgate.migrations.command"),
        _command(raw["status"], "x-colorgate.migrations.status")
        if raw.get("status") is not None
        else (),
        _bool(raw.get("cheap", False), "x-colorgate.migrations.cheap"),
    )


def _database(
    block: dict, services: dict, colored: list[str], shared: list[str]
) -> Database | None:
    raw_db = block.get("database")
    if isinstance(raw_db, list):
        raise ContractError(
            "x-colorgate.database: name one database service (two databases are not supported)"
        )
    if raw_db is None:
        return None
    raw = _keys(
        {"service": raw_db} if isinstance(raw_db, str) else raw_db,
        DATABASE_KEYS,
        "x-colorgate.database",
    )
    if isinstance(raw.get("service"), list):
        raise ContractError(
            "x-colorgate.database.service: name one database service (two databases are not supported)"
        )
    service = _known(raw.get("service"), services, "x-colorgate.database.service")
    if service not in shared:
        raise ContractError(
            f"x-colorgate.database.service: {service!r} is not shared: the database is started once, for both colors"
        )
    url_file = _variables(
        raw.get("file", ()),
        "x-colorgate.database.file",
        "DATABASE_URL_FILE",
        " (Colorgate sets it to the path of a file holding the URL)",
    )
    parts = raw.get("parts") or {}
    if not isinstance(parts, dict):
        raise ContractError(
            "x-colorgate.database.parts: should be a mapping of the URL's parts to variables, "
            "such as {host: DB_HOST, name: DB_NAME, user: DB_USER, password_file: DB_PASSWORD_FILE}"
        )
    for part, var in parts.items():
        if part not in DATABASE_PARTS:
            raise ContractError(
                f"x-colorgate.database.parts: unknown part {part!r}: use {', '.join(DATABASE_PARTS)}"
            )
        _variables(var, f"x-colorgate.database.parts.{part}", "DB_HOST")
    env = _variables(
        raw.get("env", () if parts else "DATABASE_URL"), "x-colorgate.database.env", "DATABASE_URL"
    )
    # with a file, the URL never sits in the environment: a variable named beside it is removed
    env, unset = ((), env if "env" in raw else ()) if url_file else (env, ())
    scheme = raw.get("scheme", "postgresql")
    if scheme not in DATABASE_SCHEMES:
        raise ContractError(
            f"x-colorgate.database.scheme: should be one of {', '.join(DATABASE_SCHEMES)} "
            "(the URL's scheme as the app's driver reads it)"
        )
    kind = raw.get("kind", "postgresql")
    if kind not in ("postgresql", "other"):
        raise ContractError("x-colorgate.database.kind: should be postgresql or other")
    db_networks = set(networks_of(services[service] or {}))
    if "clients" in raw:
        clients = [
            _known(n, services, f"x-colorgate.database.clients[{i}]")
            for i, n in enumerate(_names(raw["clients"], "x-colorgate.database.clients"))
        ]
        stray = [c for c in clients if c not in colored]
        if stray:
            raise ContractError(
                f"x-colorgate.database.clients: {stray[0]!r} is not colored: list the colored services that use the database"
            )
    else:
        clients = [c for c in colored if db_networks & set(networks_of(services[c] or {}))]
    return Database(
        service,
        env,
        tuple(clients),
        kind,
        url_file,
        scheme,
        tuple((p, v) for p, v in parts.items()),
        unset,
    )


def _replicas(block: dict) -> dict[str, int]:
    raw_colored, replicas = block.get("colored"), {}
    for name, options in raw_colored.items() if isinstance(raw_colored, dict) else ():
        where = f"x-colorgate.colored.{name}"
        options = _keys(options if options is not None else {}, COLORED_KEYS, where)
        if "replicas" in options:
            replicas[name] = _int(options["replicas"], f"{where}.replicas", 1, 100)
    return replicas


def _secrets(raw, services: dict, colored: list[str]) -> tuple[Secret, ...]:
    """x-colorgate.secrets: name -> the colored services that get it (a list), or
    {services: [...], env: VAR}, VAR set to the file's path."""
    if raw is not None and not isinstance(raw, dict):
        raise ContractError(
            "x-colorgate.secrets: should be a mapping of each secret's name to the services that get it"
        )
    found = []
    for name, spec in (raw or {}).items():
        where = f"x-colorgate.secrets.{name}"
        if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
            raise ContractError(
                f"{where}: a secret's name is lowercase letters, digits and '_', such as stripe_key"
            )
        spec = {"services": spec} if isinstance(spec, list) else _keys(spec, SECRET_KEYS, where)
        names = [
            _known(n, services, f"{where}.services[{i}]")
            for i, n in enumerate(_names(spec.get("services"), f"{where}.services"))
        ]
        if not names:
            raise ContractError(f"{where}.services: name the colored services that get it")
        stray = [n for n in names if n not in colored]
        if stray:
            raise ContractError(
                f"{where}.services: {stray[0]!r} is not colored: secrets reach colored services (a shared one reads its own)"
            )
        env = spec.get("env", "")
        if env and not (isinstance(env, str) and ENV_NAME.fullmatch(env)):
            raise ContractError(
                f"{where}.env: should be an environment variable name such as {name.upper()}_FILE"
            )
        found.append(Secret(name, tuple(names), env))
    return tuple(found)


def _size(value, where: str) -> str:
    value = str(value)
    if not SIZE.fullmatch(value):
        raise ContractError(f"{where}: should be a size such as 10m, 512k or 1g")
    return value
