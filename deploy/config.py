"""Settings: loaded once from an env profile, validated up front, then passed along.

Sources, later ones winning:
  .env.<profile>          committed: safe defaults (development) or templates
  .env.<profile>.local    not committed: this machine's values and secrets
  the process environment for the same keys (CI secrets, test overrides)

Every problem is reported as one line that names the key, the file it came from and
the fix, before anything starts. See .env.example for every key, annotated.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import hmac
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from deploy import contract, render, runner
from deploy.colors import COLORS
from deploy.errors import ConfigError

PROFILES = ("development", "staging", "production")
STRICT_PROFILES = ("staging", "production")  # placeholders are refused here
PLACEHOLDER = re.compile(r"change[-_ ]?me|replace[-_ ]?me|<[^>]+>|^x{3,}$|^todo$", re.IGNORECASE)
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
OPTIONAL_IDENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,58})?$")  # room for the app role's "_app"
IMAGE_PREFIX = re.compile(r"^([a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?/)*([a-z0-9]+([._-][a-z0-9]+)*/)?$")


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError("should be a port number from 1 to 65535")
    return int(value)


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("should be an IP address such as 127.0.0.1 or 0.0.0.0") from None


def _networks(value: str) -> tuple[str, ...]:
    """A comma-separated list of IPv4 addresses or networks (203.0.113.7, 198.51.100.0/24)."""
    found = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            found.append(str(ipaddress.IPv4Network(part)))
        except ValueError:
            raise ValueError(f"should list IPv4 addresses or networks such as 203.0.113.7,198.51.100.0/24 (not {part!r})") from None
    return tuple(found)


def _pattern(regex: re.Pattern[str], hint: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(hint)
        return value

    return parse


def _whole(low: int, high: int, hint: str) -> Callable[[str], int]:
    """A parser for a whole number from `low` to `high`; `hint` says what it should be."""
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"should be {hint}")
        return int(value)

    return parse


_seconds = _whole(1, 3600, "a whole number of seconds from 1 to 3600")
_seconds_or_zero = _whole(0, 3600, "a whole number of seconds from 0 to 3600")
_count = _whole(1, 1000, "a whole number from 1 to 1000")
_limit = _whole(0, 1_000_000, "a whole number from 0 (no limit) to 1000000")
_conn_limit = _whole(0, 65535, "a whole number from 0 (no limit) to 65535")  # nginx's limit_conn takes no more


def _size(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[kmg]", value):
        raise ValueError("should be a size such as 512m or 2g")
    return value


def _docker_host(value: str) -> str:
    if value and not re.fullmatch(r"^(unix|tcp|ssh)://\S+$", value):
        raise ValueError("should be empty (local engine) or a URL like ssh://user@host")
    return value


def database_url(value: str) -> str:
    """postgresql://USER:PASSWORD@HOST[:PORT]/DB[?sslmode=...], or empty (the stack's own)."""
    if not value:
        return value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or port == -1:
        raise ValueError("should be a URL like postgresql://USER:PASSWORD@HOST:5432/DB, or empty for the stack's own PostgreSQL")
    if not parts.username or not parts.password:
        raise ValueError("needs a user and a password: postgresql://USER:PASSWORD@HOST:5432/DB")
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise ValueError("needs a database name: postgresql://USER:PASSWORD@HOST:5432/DB")
    query = dict(parse_qsl(parts.query))
    if query.get("sslmode", "verify-full") not in SSLMODES:
        raise ValueError(f"has sslmode={query['sslmode']}: use one of {', '.join(SSLMODES)} (default verify-full)")
    root = query.get("sslrootcert")
    if root and not Path(root).expanduser().is_file():
        raise ValueError(f"names sslrootcert={root}, which is not a file here: give the path of the database's CA certificate "
                         "on this machine (Colorgate sends it to the containers)")
    return value


# libpq's sslmode values; a managed database's URL without one is verify-full: TLS, the
# server's certificate checked against the CA (the URL's sslrootcert, else the system's)
# and its name against the host. A weaker one is used only when the URL says so.
SSLMODES = ("verify-full", "verify-ca", "require", "prefer", "allow", "disable")


def tls_params(url: str) -> tuple[str, str]:
    """(sslmode, sslrootcert path on this machine or "") of a managed database's URL."""
    query = dict(parse_qsl(urlsplit(url).query))
    root = query.get("sslrootcert", "")
    return query.get("sslmode", "verify-full"), str(Path(root).expanduser()) if root else ""


def client_url(url: str) -> str:
    """The URL as the app's containers get it: sslrootcert (a path on this machine)
    becomes the copy Colorgate puts in their `dbca` volume, and without an sslmode a URL
    with a CA gets verify-full. Any other URL is left as the operator wrote it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "sslrootcert" for k, _ in query):
        return url
    query = [(k, f"{contract.DB_CA_DIR}/root.crt" if k == "sslrootcert" else v) for k, v in query]
    if not any(k == "sslmode" for k, _ in query):
        query.append(("sslmode", "verify-full"))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def shown_url(url: str) -> str:
    """A database URL fit to print: no password, no query. `local` for the stack's own."""
    if not url:
        return "local"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{parts.username}@{parts.hostname}{port}{parts.path}"


def _color(value: str) -> str:
    color = value.strip().lower()
    if color not in COLORS:
        raise ValueError(f"should be one of {', '.join(COLORS)}")
    return color


@dataclass(frozen=True)
class Key:
    parse: Callable[[str], object]
    default: str | None = None  # None: required
    secret: bool = False
    attr: str = ""  # the Settings field; default: the key without COLORGATE_, lowercased


KEYS: dict[str, Key] = {
    "COLORGATE_PROJECT": Key(_pattern(PROJECT, "should be lowercase letters, digits, '-' or '_'"), "colorgate"),
    "COLORGATE_DOMAIN": Key(_pattern(HOSTNAME, "should be a host name such as localhost or app.example.com"), "localhost"),
    "COLORGATE_BIND": Key(_address, "127.0.0.1"),
    "COLORGATE_HTTP_PORT": Key(_port),
    "COLORGATE_HTTPS_PORT": Key(_port),
    "COLORGATE_INITIAL_COLOR": Key(_color, "blue"),
    "COLORGATE_IMAGE_PREFIX": Key(_pattern(IMAGE_PREFIX, "should be an image name prefix ending in '/', such as colorgate/"), "colorgate/"),
    # A registry to push images to and pull them from (e.g. ghcr.io/acme): images are
    # then named <registry>/<name>:<tag> and the target pulls instead of building.
    # Empty: images are built by the target's engine. Credentials, when it needs them:
    "COLORGATE_REGISTRY": Key(_pattern(re.compile(r"^([a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*)?$"),
                                       "should be a registry and path such as ghcr.io/acme or 127.0.0.1:5000/colorgate"), ""),
    "COLORGATE_REGISTRY_USER": Key(str, ""),
    # Without a registry: `build` makes the images with the target's engine; `stream`
    # makes them with this machine's and sends what the target lacks over SSH
    # (docker save | docker load).
    "COLORGATE_IMAGES": Key(_pattern(re.compile(r"^(build|stream)$"), "should be build or stream"), "build", attr="image_source"),
    "COLORGATE_REGISTRY_PASSWORD": Key(str, "", secret=True),
    "COLORGATE_DEBIAN_MIRROR": Key(_pattern(re.compile(r"^https?://\S+$"), "should be an http(s) URL"), "http://deb.debian.org/debian"),
    "COLORGATE_DOCKER_HOST": Key(_docker_host, ""),
    # An SSH host: the one connection stays open this long after a command (0: closed with it).
    "COLORGATE_SSH_PERSIST": Key(_seconds_or_zero, "60"),
    "COLORGATE_HEALTH_TIMEOUT": Key(_seconds, "120"),
    # The app: its compose file with an x-colorgate block (or the directory holding it).
    "COLORGATE_APP": Key(_pattern(re.compile(r"^\S+$"), "should be a path to a compose file or its directory"), "examples/spa-api-postgres", attr="app_path"),
    "COLORGATE_DRAIN_SECONDS": Key(_seconds, "30"),
    # Per client address at the edge: requests per second (and the burst above it, let
    # through at once) and connections at once; over either, 429. 0: no limit.
    "COLORGATE_RATE_LIMIT": Key(_limit, "200"),
    "COLORGATE_RATE_BURST": Key(_limit, "400"),
    "COLORGATE_CONN_LIMIT": Key(_conn_limit, "200"),
    # Every container (unless its service sets its own): at most this many processes and
    # this much memory; its log rotated at this size, this many files kept.
    "COLORGATE_PIDS_LIMIT": Key(_limit, "512"),
    "COLORGATE_MEMORY_LIMIT": Key(_size, "1g"),
    "COLORGATE_LOG_MAX_SIZE": Key(_size, "10m"),
    "COLORGATE_LOG_MAX_FILES": Key(_count, "3"),
    # During a db.move write freeze the edge holds each write this long, then 503.
    "COLORGATE_HOLD_SECONDS": Key(_seconds, "5"),
    # allow: the Hardening gate accepts a secret in a container's environment (an app
    # that cannot read its database URL from a file, x-colorgate.database.file)
    "COLORGATE_SECRETS_IN_ENV": Key(_pattern(re.compile(r"^(refuse|allow)$"), "should be refuse or allow"), "refuse"),
    "COLORGATE_TLS_CA": Key(_pattern(re.compile(r"^(local|system|/\S+)$"), "should be local, system or an absolute path to a CA bundle"), "local"),
    "COLORGATE_TLS_MIN_DAYS": Key(_seconds, "14"),
    "COLORGATE_REPORTS_DIR": Key(_pattern(re.compile(r"^\S+$"), "should be a directory path"), "reports", attr="reports_path"),
    "COLORGATE_BACKUP_KEEP": Key(_count, "7"),
    # An off-host copy of every backup: an rclone destination (`remote:path`), the rclone
    # configuration file on this machine that defines the remote (sent to the copy's
    # container on stdin, never stored there), and, for an SFTP remote, a known_hosts
    # file its host key must match.
    "COLORGATE_BACKUP_COPY": Key(_pattern(re.compile(r"^([A-Za-z0-9_.-]+:\S*)?$"), "should be an rclone destination such as offsite:colorgate/prod"), ""),
    "COLORGATE_BACKUP_COPY_CONFIG": Key(_pattern(re.compile(r"^\S*$"), "should be the path of an rclone configuration file"), ""),
    "COLORGATE_BACKUP_COPY_KNOWN_HOSTS": Key(_pattern(re.compile(r"^\S*$"), "should be the path of a known_hosts file"), ""),
    # Where the app's database is: empty for the stack's own PostgreSQL, or the URL of
    # a managed one after `invoke db.move` (checked against the target's record).
    "DATABASE_URL": Key(database_url, "", secret=True),
    # db.move --mode replicate: the managed database subscribes to the local one through
    # a temporary, TLS-only relay published on this address and port of the host ...
    "COLORGATE_MOVE_RELAY_BIND": Key(_address, "0.0.0.0"),
    "COLORGATE_MOVE_RELAY_PORT": Key(_port, "15432"),
    # ... reached only from these IPv4 addresses or networks (the managed database's
    # outgoing addresses, from its provider), enforced by the host firewall that
    # server-setup.sh installs; a move on such a host refuses to start without them.
    "COLORGATE_MOVE_RELAY_ALLOW": Key(_networks, ""),
    # ... and reaches the host under this name or address (empty: COLORGATE_DOMAIN).
    "COLORGATE_MOVE_RELAY_HOST": Key(_pattern(re.compile(r"^[A-Za-z0-9.:-]*$"), "should be a host name or address"), ""),
    # The app's own PostgreSQL (x-colorgate.database): required only when it has one.
    "POSTGRES_DB": Key(_pattern(OPTIONAL_IDENT, "should be a plain identifier (letters, digits, '_'; at most 59)"), ""),
    "POSTGRES_USER": Key(_pattern(OPTIONAL_IDENT, "should be a plain identifier (letters, digits, '_'; at most 59)"), ""),
    "POSTGRES_PASSWORD": Key(str, "", secret=True),
}


@dataclass(frozen=True)
class Settings:
    profile: str
    root: Path
    project: str
    domain: str
    bind: str
    http_port: int
    https_port: int
    initial_color: str
    image_prefix: str
    registry: str
    registry_user: str
    registry_password: str = field(repr=False)
    image_source: str
    debian_mirror: str
    docker_host: str
    ssh_persist: int
    health_timeout: int
    app_path: str
    drain_seconds: int
    rate_limit: int
    rate_burst: int
    conn_limit: int
    pids_limit: int
    memory_limit: str
    log_max_size: str
    log_max_files: int
    hold_seconds: int
    secrets_in_env: str
    tls_ca: str
    tls_min_days: int
    reports_path: str
    backup_keep: int
    backup_copy: str
    backup_copy_config: str
    backup_copy_known_hosts: str
    database_url: str = field(repr=False)
    move_relay_bind: str
    move_relay_port: int
    move_relay_allow: tuple[str, ...]
    move_relay_host: str
    postgres_db: str
    postgres_user: str
    postgres_password: str = field(repr=False)
    app: contract.App = field(repr=False, compare=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def as_environment(self) -> dict[str, str]:
        """These settings as environment variables, for a child process (the gates)
        that must load exactly the same settings. Contains secrets: never log it."""
        return {**self.raw, "COLORGATE_PROFILE": self.profile, "COLORGATE_APP": str(self.app.file)}

    @property
    def app_dir(self) -> Path:
        """The app's directory: compose resolves its relative paths (build contexts) here."""
        return self.app.directory

    @property
    def reports_dir(self) -> Path:
        return self.root / self.reports_path

    @property
    def edge_address(self) -> str:
        """Where the public edge is reached: its bind address, or the domain when it
        listens on every address."""
        return self.domain if self.bind in ("0.0.0.0", "::") else self.bind

    @property
    def compose_file(self) -> Path:
        """The compose file Colorgate renders from the app's (deploy/render.py), written
        before each compose command: outside the checkout, since it is derived data."""
        return Path(tempfile.gettempdir()) / f"colorgate-{os.getuid()}" / self.project / "compose.yml"

    @property
    def app_db_user(self) -> str:
        """The app's own role in the stack's PostgreSQL: it owns the app's database and
        is no superuser (POSTGRES_USER is, for Colorgate's backups, restores and moves)."""
        return f"{self.postgres_user}_app"

    def app_db_password(self) -> str:
        """That role's password, derived from POSTGRES_PASSWORD (one-way): nothing more
        to keep, and it changes with it (Colorgate sets it at every start)."""
        return hmac.new(self.postgres_password.encode(), b"colorgate: the app's database role", hashlib.sha256).hexdigest()

    def local_database_url(self) -> str:
        """The URL the app reaches the stack's own PostgreSQL at, as its own role (holds the password)."""
        db = self.app.postgres
        if not db:
            return ""
        return (f"postgresql://{self.app_db_user}:{self.app_db_password()}"
                f"@{db.service}:5432/{quote(self.postgres_db, safe='')}")

    def app_database_url(self) -> str:
        """The URL the app's colored services get: the managed database's, else the stack's own."""
        return self.database_url or self.local_database_url()

    @property
    def https_url(self) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{self.domain}{port}"

    @property
    def http_url(self) -> str:
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{self.domain}{port}"

    @property
    def builder(self) -> "Settings":
        """The settings whose engine makes the images: this machine's when streaming."""
        return dataclasses.replace(self, docker_host="") if self.image_source == "stream" else self

    def docker_env(self) -> dict[str, str]:
        """Environment for docker commands: which engine to talk to (and, for an SSH
        host, how long its connection outlives the command: deploy/ssh.py)."""
        if not self.docker_host:
            return {}
        return {"DOCKER_HOST": self.docker_host, **({"COLORGATE_SSH_PERSIST": str(self.ssh_persist)}
                                                     if self.docker_host.startswith("ssh://") else {})}

    def compose_env(self) -> dict[str, str]:
        """Variables the compose file interpolates (secrets included: never log this)."""
        return {
            **self.docker_env(),
            "COLORGATE_DOMAIN": self.domain,
            "COLORGATE_BIND": self.bind,
            "COLORGATE_HTTP_PORT": str(self.http_port),
            "COLORGATE_HTTPS_PORT": str(self.https_port),
            "COLORGATE_DRAIN_SECONDS": str(self.drain_seconds),
            "COLORGATE_RATE_LIMIT": str(self.rate_limit),
            "COLORGATE_RATE_BURST": str(self.rate_burst),
            "COLORGATE_CONN_LIMIT": str(self.conn_limit),
            "COLORGATE_PIDS_LIMIT": str(self.pids_limit),
            "COLORGATE_MEMORY_LIMIT": self.memory_limit,
            "COLORGATE_LOG_MAX_SIZE": self.log_max_size,
            "COLORGATE_LOG_MAX_FILES": str(self.log_max_files),
            "COLORGATE_IMAGE_PREFIX": self.image_prefix,
            "COLORGATE_MOVE_RELAY_BIND": self.move_relay_bind,
            "COLORGATE_MOVE_RELAY_PORT": str(self.move_relay_port),
            "COLORGATE_EDGE_ROUTES": render.edge_routes_b64(self.app),
            "POSTGRES_DB": self.postgres_db,
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_PASSWORD": self.postgres_password,
        }


def parse_env_text(text: str, origin: str) -> dict[str, str]:
    """Parse KEY=VALUE lines (comments, blank lines, `export`, quotes); raise on junk."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"^[A-Z_][A-Z0-9_]*$", key):
            raise ConfigError(f"{origin}:{number}: expected KEY=value, got {raw.strip()[:40]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def merge_sources(
    layers: list[tuple[str, Mapping[str, str]]], environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Merge file layers (in order) and the environment; return values and where each came from."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f"did you mean {close[0]}?" if close else "see .env.example for the keys"
                raise ConfigError(f"{origin}: unknown key {key}: {hint}")
            values[key] = value
            sources[key] = origin
    for key in KEYS:
        if key in environ:
            values[key] = environ[key]
            sources[key] = "the environment"
    return values, sources


def load_app(root: Path, value: str, source: str | None = None) -> contract.App:
    """The app's contract, validated (ContractError names the path and the fix). A
    relative path is the operator's, from the directory of the env files; the default
    (no source) is the example that ships with Colorgate."""
    path = Path(value)
    return contract.load(path if path.is_absolute() else (root if source else project_root()) / path)


def validate(profile: str, root: Path, values: Mapping[str, str], sources: Mapping[str, str],
             app: contract.App | None = None) -> Settings:
    """Turn raw strings into Settings, or raise ConfigError naming key, file and fix."""
    profile_file = f".env.{profile}"
    parsed: dict[str, object] = {}
    raw_values: dict[str, str] = {}
    for key, spec in KEYS.items():
        origin = sources.get(key, profile_file)
        raw = values.get(key)
        if raw is None or raw == "":
            if spec.default is None:
                raise ConfigError(
                    f"{key} is missing: set it in {profile_file} or {profile_file}.local (see .env.example)"
                )
            raw = spec.default
        if profile in STRICT_PROFILES and PLACEHOLDER.search(raw):
            shown = "a placeholder" if spec.secret else f"a placeholder ({raw!r})"
            raise ConfigError(
                f"{key} in {origin} is {shown}: set a real value in {profile_file}.local or the environment"
            )
        raw_values[key] = raw
        try:
            parsed[key] = spec.parse(raw)
        except ValueError as exc:
            shown = "" if spec.secret else f" {raw!r}"
            raise ConfigError(f"{key}{shown} in {origin} {exc}") from None
    if parsed["COLORGATE_HTTP_PORT"] == parsed["COLORGATE_HTTPS_PORT"]:
        raise ConfigError(
            f"COLORGATE_HTTP_PORT and COLORGATE_HTTPS_PORT are both {parsed['COLORGATE_HTTP_PORT']}: give them different ports"
        )
    app = app or load_app(root, str(parsed["COLORGATE_APP"]), sources.get("COLORGATE_APP"))
    if app.postgres:
        for key in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
            if not str(parsed[key]).strip():
                raise ConfigError(f"{key} is missing: the app's database {app.postgres.service!r} (x-colorgate.database) needs it; "
                                  f"set it in {profile_file}.local or the environment")
    values = {spec.attr or key.removeprefix("COLORGATE_").lower(): parsed[key] for key, spec in KEYS.items()}
    registry = parsed["COLORGATE_REGISTRY"]
    values.update(  # what follows from more than one key
        image_prefix=registry + "/" if registry else parsed["COLORGATE_IMAGE_PREFIX"],
        image_source="registry" if registry else parsed["COLORGATE_IMAGES"],
        app_path=str(app.file),
        move_relay_host=parsed["COLORGATE_MOVE_RELAY_HOST"] or parsed["COLORGATE_DOMAIN"],
    )
    return Settings(profile=profile, root=root, app=app, sources=dict(sources), raw=raw_values, **values)


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def load(profile: str | None = None, root: Path | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the settings for `profile` (default: $COLORGATE_PROFILE or
    development). `overrides` (command-line options such as --host) win over all."""
    environ = os.environ if environ is None else environ
    root = root or project_root()
    profile = (profile or environ.get("COLORGATE_PROFILE") or "development").strip()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    base = root / f".env.{profile}"
    if not base.is_file():
        raise ConfigError(f"env file {base.name} is missing: create it from .env.example (cp .env.example {base.name})")
    layers = [(base.name, parse_env_text(base.read_text(), base.name))]
    local = root / f".env.{profile}.local"
    if local.is_file():
        layers.append((local.name, parse_env_text(local.read_text(), local.name)))
    values, sources = merge_sources(layers, environ)
    for key, (option, value) in (overrides or {}).items():
        values[key], sources[key] = value, option
    settings = validate(profile, root, values, sources)
    runner.add_secret(settings.postgres_password)
    runner.add_secret(settings.local_database_url())
    if settings.postgres_password:
        runner.add_secret(settings.app_db_password())
    runner.add_secret(settings.registry_password)
    if settings.database_url:
        runner.add_secret(unquote(urlsplit(settings.database_url).password or ""))
        runner.add_secret(settings.database_url)
    return settings
