"""The x-colorgate block's sections, each validated against the file's services into its
part of the App (contract/model.py): the roles of the services, routes, health checks,
migrations, the database, replicas, the app's secrets. Every error names its path in the
block and the fix."""

from __future__ import annotations

import re

from deploy.contract import fields
from deploy.contract.model import (
    COLORED_KEYS,
    DATABASE_KEYS,
    DATABASE_PARTS,
    DATABASE_SCHEMES,
    ENV_NAME,
    HEALTH_KEYS,
    MIGRATION_KEYS,
    ROUTE_ANALYSIS_KEYS,
    ROUTE_KEYS,
    SECRET_KEYS,
    SECRET_NAME,
    SECURITY_HEADERS,
    SIZE,
    Database,
    Health,
    Migrations,
    Route,
    Secret,
    networks_of,
)
from deploy.errors import ContractError


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
    raw = fields.keys(raw, ROUTE_ANALYSIS_KEYS, where)
    out = {}
    if "max_error_ratio" in raw:
        ratio = raw["max_error_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ContractError(
                f"{where}.max_error_ratio: should be a share from 0 to 1, such as 0.05 for 5%"
            )
        out["max_error_ratio"] = float(ratio)
    if "max_p95_ms" in raw:
        out["max_p95_ms"] = fields.integer(raw["max_p95_ms"], f"{where}.max_p95_ms", 1, 600_000)
    return out


def roles(block: dict, services: dict) -> tuple[list[str], list[str]]:
    """The colored and the shared services: every service one of them, and what each may depend on."""
    colored = [
        fields.known(n, services, f"x-colorgate.colored[{i}]")
        for i, n in enumerate(fields.names(block.get("colored"), "x-colorgate.colored"))
    ]
    shared = [
        fields.known(n, services, f"x-colorgate.shared[{i}]")
        for i, n in enumerate(fields.names(block.get("shared"), "x-colorgate.shared"))
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


def routes(block: dict, services: dict, colored: list[str]) -> list[Route]:
    routes = []
    raw_routes = block.get("routes") or []
    if not isinstance(raw_routes, list):
        raise ContractError("x-colorgate.routes: should be a list of {path, to: service:port}")
    for i, raw in enumerate(raw_routes):
        where = f"x-colorgate.routes[{i}]"
        raw = fields.keys(raw, ROUTE_KEYS, where)
        path_ = fields.path(raw.get("path"), f"{where}.path")
        target = raw.get("to")
        if not isinstance(target, str) or not re.fullmatch(r"[^:\s]+:\d+", target):
            raise ContractError(
                f"{where}.to: should be service:port, such as api:3000 (got {target!r})"
            )
        service, port = target.rsplit(":", 1)
        fields.known(service, services, f"{where}.to")
        if service not in colored:
            raise ContractError(
                f"{where}: service {service!r} is not colored: route only to colored services"
            )
        routes.append(
            Route(
                path=path_,
                service=service,
                port=fields.integer(int(port), f"{where}.to", 1, 65535),
                websocket=fields.boolean(raw.get("websocket", False), f"{where}.websocket"),
                buffering=fields.boolean(raw.get("buffering", True), f"{where}.buffering"),
                timeout=fields.integer(raw.get("timeout", 60), f"{where}.timeout", 1, 86400),
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


def health(
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
        fields.known(service, services, where)
        if service not in colored:
            raise ContractError(
                f"{where}: service {service!r} is not colored: health checks are for the colored services"
            )
        raw = fields.keys({"path": raw} if isinstance(raw, str) else raw, HEALTH_KEYS, where)
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
            path=fields.path(raw.get("path"), f"{where}.path"),
            port=fields.integer(raw.get("port", default_port), f"{where}.port", 1, 65535),
            status=fields.integer(raw.get("status", 200), f"{where}.status", 100, 599),
            json=tuple(
                (k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in expected.items()
            ),
            contains=contains,
            timeout=fields.integer(raw.get("timeout", 5), f"{where}.timeout", 1, 300),
        )
    missing = [s for s in dict.fromkeys(r.service for r in routes) if s not in health]
    if missing:
        raise ContractError(
            f"x-colorgate.health: routed service {missing[0]!r} has no health check: add {{path: /health}} for it"
        )
    return health


def migrations(block: dict, services: dict, colored: list[str]) -> Migrations | None:
    if block.get("migrations") is None:
        return None
    raw = fields.keys(block["migrations"], MIGRATION_KEYS, "x-colorgate.migrations")
    service = fields.known(raw.get("service"), services, "x-colorgate.migrations.service")
    if service not in colored:
        raise ContractError(
            f"x-colorgate.migrations.service: {service!r} is not colored: migrations run in a colored service's candidate image"
        )
    return Migrations(
        service,
        fields.command(raw.get("command"), "x-colorgate.migrations.command"),
        fields.command(raw["status"], "x-colorgate.migrations.status")
        if raw.get("status") is not None
        else (),
        fields.boolean(raw.get("cheap", False), "x-colorgate.migrations.cheap"),
    )


def database(block: dict, services: dict, colored: list[str], shared: list[str]) -> Database | None:
    raw_db = block.get("database")
    if isinstance(raw_db, list):
        raise ContractError(
            "x-colorgate.database: name one database service (two databases are not supported)"
        )
    if raw_db is None:
        return None
    raw = fields.keys(
        {"service": raw_db} if isinstance(raw_db, str) else raw_db,
        DATABASE_KEYS,
        "x-colorgate.database",
    )
    service = _database_service(raw, services, shared)
    url_file = fields.variables(
        raw.get("file", ()),
        "x-colorgate.database.file",
        "DATABASE_URL_FILE",
        " (Colorgate sets it to the path of a file holding the URL)",
    )
    parts = _database_parts(raw)
    env = fields.variables(
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
    clients = _database_clients(raw, services, colored, service)
    return Database(service, env, clients, kind, url_file, scheme, tuple(parts.items()), unset)


def _database_service(raw: dict, services: dict, shared: list[str]) -> str:
    if isinstance(raw.get("service"), list):
        raise ContractError(
            "x-colorgate.database.service: name one database service (two databases are not supported)"
        )
    service = fields.known(raw.get("service"), services, "x-colorgate.database.service")
    if service not in shared:
        raise ContractError(
            f"x-colorgate.database.service: {service!r} is not shared: the database is started once, for both colors"
        )
    return service


def _database_parts(raw: dict) -> dict:
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
        fields.variables(var, f"x-colorgate.database.parts.{part}", "DB_HOST")
    return parts


def _database_clients(
    raw: dict, services: dict, colored: list[str], service: str
) -> tuple[str, ...]:
    """The services that use the database: those listed, else the colored ones on its networks."""
    if "clients" not in raw:
        db_networks = set(networks_of(services[service] or {}))
        return tuple(c for c in colored if db_networks & set(networks_of(services[c] or {})))
    clients = [
        fields.known(n, services, f"x-colorgate.database.clients[{i}]")
        for i, n in enumerate(fields.names(raw["clients"], "x-colorgate.database.clients"))
    ]
    stray = [c for c in clients if c not in colored]
    if stray:
        raise ContractError(
            f"x-colorgate.database.clients: {stray[0]!r} is not colored: list the colored services that use the database"
        )
    return tuple(clients)


def replicas(block: dict) -> dict[str, int]:
    raw_colored, replicas = block.get("colored"), {}
    for name, options in raw_colored.items() if isinstance(raw_colored, dict) else ():
        where = f"x-colorgate.colored.{name}"
        options = fields.keys(options if options is not None else {}, COLORED_KEYS, where)
        if "replicas" in options:
            replicas[name] = fields.integer(options["replicas"], f"{where}.replicas", 1, 100)
    return replicas


def secrets(raw, services: dict, colored: list[str]) -> tuple[Secret, ...]:
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
        spec = (
            {"services": spec} if isinstance(spec, list) else fields.keys(spec, SECRET_KEYS, where)
        )
        names = [
            fields.known(n, services, f"{where}.services[{i}]")
            for i, n in enumerate(fields.names(spec.get("services"), f"{where}.services"))
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
