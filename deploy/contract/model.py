"""The contract's model: what an app is made of (services, routes, health checks,
migrations, its database), with the names Colorgate keeps for itself. Built only by
deploy/contract/parse.py, from a compose file's x-colorgate block."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import ContractError

COLORS = ("blue", "green")
# Colorgate's own parts
OWN_SERVICES = (
    "edge",
    "dbtools",
    "dbrelay",
    "certbot",
    "certbot-loopback",
)
OWN_VOLUMES = (
    "edge-state",
    "tls",
    "acme",
    "backups",
    "letsencrypt",
    "dbca",
    "secrets-db",
    "secrets-tools",
    "secrets-blue",
    "secrets-green",
)
EDGE_NETWORK = "colorgate"  # the edge and every routed colored copy
DB_NETWORK = "colorgate-db"  # internal: a database the compose file leaves on its default network, and its clients
DB_CA_DIR = (
    "/run/colorgate-db"  # where database clients find a managed database's CA (volume `dbca`)
)
SECRETS_DIR = "/run/colorgate-secrets"  # secret files, read-only: `secrets-db` in the database, `secrets-tools` in
# the one-off dbtools, `secrets-<color>` in that color's database clients
DB_PASSWORD_FILE = (
    "postgres_password"  # in secrets-db and secrets-tools (the database's superuser password)
)
DB_URL_FILE = "database_url"  # in secrets-<color> (that color's database URL)
DB_CLIENT_PASSWORD_FILE = "database_password"  # in secrets-<color> (the password of that URL: database.parts.password_file)
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

# The shapes Compose's specification gives the keys Colorgate reads or rewrites (a
# service's, and the file's own sections): checked first, so a wrong one is one line.
TEXT, NUMBER, LIST, MAPPING = "text", "number", "list", "mapping"
SERVICE_SHAPES = {
    "image": (TEXT,),
    "build": (TEXT, MAPPING),
    "command": (TEXT, LIST),
    "entrypoint": (TEXT, LIST),
    "environment": (MAPPING, LIST),
    "labels": (MAPPING, LIST),
    "env_file": (TEXT, LIST),
    "ports": (LIST,),
    "expose": (LIST,),
    "networks": (LIST, MAPPING),
    "depends_on": (LIST, MAPPING),
    "volumes": (LIST,),
    "healthcheck": (MAPPING,),
    "deploy": (MAPPING,),
    "profiles": (LIST,),
    "secrets": (LIST,),
    "tmpfs": (TEXT, LIST),
    "cap_add": (LIST,),
    "cap_drop": (LIST,),
    "security_opt": (LIST,),
    "ulimits": (MAPPING,),
    "sysctls": (MAPPING, LIST),
    "extra_hosts": (LIST, MAPPING),
    "logging": (MAPPING,),
    "user": (TEXT, NUMBER),
    "working_dir": (TEXT,),
    "restart": (TEXT,),
    "read_only": ("bool",),
    "init": ("bool",),
    "stop_grace_period": (TEXT,),
}
# each a mapping of names to bodies (or nothing)
TOP_SECTIONS = (
    "volumes",
    "networks",
    "secrets",
    "configs",
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SIZE = re.compile(r"^\d+[kKmMgG]?$")
ROUTE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
# The edge's security headers, on every answer of its HTTPS server (its own 503 and 429
# too). An app's own value of one is replaced, never sent beside it, unless a route lets
# the app own that header there (`routes[].app_headers`): then the app's passes as sent.
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-Frame-Options": "DENY",
    # forbids only framing, plugins and a foreign <base>: any SPA works under it
    "Content-Security-Policy": "frame-ancestors 'none'; base-uri 'self'; object-src 'none'",
}
BLOCK_KEYS = ("colored", "shared", "routes", "health", "migrations", "database", "secrets")
SECRET_KEYS = ("services", "env")
SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
APP_SECRETS_DIR = (
    "/run/app-secrets"  # the app's own secrets (x-colorgate.secrets), one file each, read-only
)
COLORED_KEYS = ("replicas",)
ROUTE_KEYS = (
    "path",
    "to",
    "websocket",
    "buffering",
    "timeout",
    "body_size",
    "analysis",
    "app_headers",
)
ROUTE_ANALYSIS_KEYS = ("max_error_ratio", "max_p95_ms")
HEALTH_KEYS = ("path", "status", "json", "contains", "timeout", "port")
MIGRATION_KEYS = ("service", "command", "status", "cheap")
DATABASE_KEYS = ("service", "env", "file", "clients", "kind", "scheme", "parts")
# The URL's scheme as the app's driver wants it (SQLAlchemy names its driver there).
DATABASE_SCHEMES = (
    "postgresql",
    "postgres",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
    "postgresql+pg8000",
)
# The URL's parts, each in a variable of its own, for an app that reads no URL.
DATABASE_PARTS = ("host", "port", "name", "user", "password", "password_file")


@dataclass(frozen=True)
class Route:
    path: str
    service: str
    port: int
    websocket: bool = False
    buffering: bool = True
    timeout: int = 60
    body_size: str = "10m"
    # the analysis judges this route's requests against these instead of the settings' (None: the settings')
    max_error_ratio: float | None = None
    max_p95_ms: int | None = None
    app_headers: tuple[
        str, ...
    ] = ()  # of SECURITY_HEADERS: the app's own value passes on this route

    @property
    def own_bounds(self) -> bool:
        return self.max_error_ratio is not None or self.max_p95_ms is not None


@dataclass(frozen=True)
class Health:
    service: str
    path: str
    port: int
    status: int = 200
    json: tuple[tuple[str, str], ...] = ()
    contains: str = ""
    timeout: int = 5


@dataclass(frozen=True)
class Migrations:
    service: str
    command: tuple[str, ...]
    status: tuple[str, ...] = ()
    cheap: bool = False  # cheap and idempotent: its backup is verified (and kept) only when it changed the schema


@dataclass(frozen=True)
class Database:
    service: str
    env: tuple[
        str, ...
    ]  # the variables that hold the URL itself (default DATABASE_URL, unless `file` or `parts`)
    clients: tuple[str, ...]
    kind: str = "postgresql"  # postgresql, or another engine (the db.* tasks then refuse)
    file: tuple[str, ...] = ()  # the variables naming the file that holds the URL
    scheme: str = "postgresql"  # the URL's scheme as the app's driver wants it (DATABASE_SCHEMES)
    parts: tuple[
        tuple[str, str], ...
    ] = ()  # (part, variable): the URL's parts one by one (DATABASE_PARTS)
    unset: tuple[
        str, ...
    ] = ()  # `env` named beside `file`: removed from the clients' environment (a URL written there)

    @property
    def reads_files(self) -> bool:
        """Whether its clients get a file of secrets (the URL, or the password alone)."""
        return bool(self.file) or any(part == "password_file" for part, _ in self.parts)

    def variables(self) -> list[tuple[str, str]]:
        """(variable, what Colorgate puts in it) for every variable a client gets."""
        said = {
            "host": "the database's host",
            "port": "its port",
            "name": "the database's name",
            "user": "the app's role",
            "password": "its password (in the environment)",
            "password_file": "the path of a file holding the password",
        }
        return (
            [(v, f"the URL ({self.scheme}://...), in the environment") for v in self.env]
            + [(v, "removed (the app reads the URL from its file)") for v in self.unset]
            + [(v, "the path of a file holding the URL") for v in self.file]
            + [(v, said[part]) for part, v in self.parts]
        )


@dataclass(frozen=True)
class Secret:
    """One of the app's own secrets (an API key, a signing key): its value comes from the
    settings (COLORGATE_SECRET_<NAME>, or a command: COLORGATE_SECRET_<NAME>_COMMAND) and
    reaches each of `services` as the file APP_SECRETS_DIR/<name>, never its environment."""

    name: str
    services: tuple[str, ...]
    env: str = (
        ""  # a variable set to the file's path, for an app that reads it from one (STRIPE_KEY_FILE)
    )

    @property
    def path(self) -> str:
        return f"{APP_SECRETS_DIR}/{self.name}"

    @property
    def key(self) -> str:
        """The setting that holds its value (its command: this and `_COMMAND`)."""
        return f"COLORGATE_SECRET_{self.name.upper()}"


def app_secrets_volume(color: str, service: str) -> str:
    """The volume of the secret files of one colored copy (only its own secrets)."""
    return f"secrets-{color}-{service}"


@dataclass(frozen=True)
class App:
    """An app's contract, validated. `services` is the compose file's services, as written."""

    file: Path
    services: dict = field(repr=False, compare=False)
    colored: tuple[str, ...]
    shared: tuple[str, ...]
    routes: tuple[Route, ...]
    health: dict[str, Health]
    migrations: Migrations | None
    database: Database | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    # tasks per color on a Swarm (x-colorgate.colored.NAME.replicas; 1)
    replicas: dict[str, int] = field(default_factory=dict)
    secrets: tuple[Secret, ...] = ()  # the app's own (x-colorgate.secrets)

    @property
    def directory(self) -> Path:
        return self.file.parent

    @property
    def name(self) -> str:
        """The app's name as compose gives its project one: the file's `name:`, else its
        directory's, lowercased, without what a project name may not hold."""
        given = (
            self.raw.get("name") if isinstance(self.raw.get("name"), str) else self.directory.name
        )
        return re.sub(r"[^a-z0-9_-]", "", given.lower()).lstrip("_-")[:63] or "app"

    @property
    def routed(self) -> tuple[str, ...]:
        """Colored services the edge routes to, in the contract's order."""
        return tuple(dict.fromkeys(r.service for r in self.routes))

    @property
    def features_dir(self) -> Path:
        """The app's own gate features, next to its compose file."""
        return self.directory / "features"

    @property
    def postgres(self) -> Database | None:
        return self.database if self.database and self.database.kind == "postgresql" else None

    def copy_name(self, service: str, color: str) -> str:
        """`api` in blue -> `api_blue`: the compose service (and DNS name) of a colored copy."""
        return f"{service}_{color}"

    def color_services(self, color: str) -> list[str]:
        return [self.copy_name(s, color) for s in self.colored]

    def worker_services(self, color: str) -> list[str]:
        """A color's copies of the colored services the edge does not route to (workers)."""
        return [self.copy_name(s, color) for s in self.colored if s not in self.routed]

    def split_copy(self, name: str) -> tuple[str, str] | None:
        """`api_blue` -> (`api`, `blue`); None for anything that is not a colored copy."""
        service, _, color = name.rpartition("_")
        return (service, color) if color in COLORS and service in self.colored else None

    def port_of(self, service: str) -> int:
        """The port the edge reaches a routed service on (its first route's)."""
        for route in self.routes:
            if route.service == service:
                return route.port
        raise ContractError(
            f"service {service!r} has no route: x-colorgate.routes names no port for it"
        )

    def route_for(self, path: str) -> Route | None:
        """The route nginx picks for `path`: the longest matching prefix."""
        matches = [r for r in self.routes if path.startswith(r.path)]
        return max(matches, key=lambda r: len(r.path), default=None)

    def buildable(self, service: str) -> bool:
        return "build" in (self.services.get(service) or {})

    def builds(self, name: str) -> bool:
        """Whether a rendered service is built here: a colored copy or shared service
        the app builds, or one of Colorgate's own parts."""
        copy = self.split_copy(name)
        return name in OWN_SERVICES or self.buildable(copy[0] if copy else name)

    def database_clients(self) -> tuple[str, ...]:
        return self.database.clients if self.database else ()

    def without_egress(self, services: tuple[str, ...]) -> list[str]:
        """Those of `services` on internal networks only: they cannot reach anything
        outside the host (a managed database, say). Routed services also get the edge's
        network, which is not internal."""
        declared = self.raw.get("networks") or {}
        return [
            s
            for s in services
            if s not in self.routed
            and all(
                (declared.get(n) or {}).get("internal") for n in networks_of(self.services[s] or {})
            )
        ]


def networks_of(service: dict) -> list[str]:
    networks = service.get("networks")
    if not networks:
        return ["default"] if service.get("network_mode") is None else []
    return list(networks) if isinstance(networks, (list, dict)) else []
