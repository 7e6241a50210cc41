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
import importlib.util
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from deploy import contract
from deploy.target import runner, ssh
from deploy.errors import ConfigError
from deploy.keys import (
    GATE_PREFIX,
    KEYS,
    PLACEHOLDER,
    PREFIXES,
    PROFILE_DEFAULTS,
    PROFILES,
    SECRET_PREFIX,
    STRICT_PROFILES,
)


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
    versions: str  # commit or counter: a deploy's default version (COLORGATE_VERSIONS)
    debian_mirror: str
    base_max_age: int
    swarm_encrypt: str
    bases: str  # mmdebstrap or image: how base images are made (COLORGATE_BASES)
    debian_image: str
    docker_host: str
    target: str
    ssh_persist: int
    health_timeout: int
    renew_every: int  # the renewer's certbot renew, this many seconds apart (COLORGATE_RENEW_EVERY)
    renewal_check: int  # the edge takes up what it renewed this many seconds apart
    app_path: str
    drain_seconds: int
    rate_limit: int
    rate_burst: int
    trusted_proxies: tuple[str, ...]
    conn_limit: int
    pids_limit: int
    memory_limit: str
    log_max_size: str
    log_max_files: int
    hold_seconds: int
    analysis_intervals: int
    analysis_seconds: int
    analysis_failure_limit: int
    analysis_max_error_ratio: float
    analysis_max_p95_ms: int
    analysis_max_slowdown: float
    analysis_min_requests: int
    analysis_inconclusive: str
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
    move_relay_firewall: str
    move_relay_host: str
    move_relay_sslmode: str
    move_relay_cert: str
    move_relay_key: str
    postgres_db: str
    postgres_user: str
    postgres_password: str = field(repr=False)
    app: contract.App = field(repr=False, compare=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # COLORGATE_GATE_*: secrets the app's own gates use (a password, a token), masked everywhere
    gate_secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # COLORGATE_SECRET_<NAME>[_COMMAND]: the app's own secrets, or the commands that print them (deploy/appsecrets.py)
    app_secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def as_environment(self) -> dict[str, str]:
        """These settings as environment variables, for a child process (the gates)
        that must load exactly the same settings. Contains secrets: never log it."""
        return {
            **self.raw,
            **self.gate_secrets,
            "COLORGATE_PROFILE": self.profile,
            "COLORGATE_APP": str(self.app.file),
        }

    @property
    def app_dir(self) -> Path:
        """The app's directory: compose resolves its relative paths (build contexts) here."""
        return self.app.directory

    @property
    def swarm(self) -> bool:
        """Whether the engine is a Swarm manager the stack runs on (deploy/target/swarm.py)."""
        return self.target == "swarm"

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
        before each compose command: outside the checkout, since it is derived data, in
        this user's private directory (checked)."""
        return ssh.private_dir("compose") / self.project / "compose.yml"

    @property
    def app_db_user(self) -> str:
        """The app's own role in the stack's PostgreSQL: it owns the app's database and
        is no superuser (POSTGRES_USER is, for Colorgate's backups, restores and moves)."""
        return f"{self.postgres_user}_app"

    def app_db_password(self) -> str:
        """That role's password, derived from POSTGRES_PASSWORD (one-way): nothing more
        to keep, and it changes with it (Colorgate sets it at every start)."""
        return hmac.new(
            self.postgres_password.encode(), b"colorgate: the app's database role", hashlib.sha256
        ).hexdigest()

    def local_database_url(self) -> str:
        """The URL the app reaches the stack's own PostgreSQL at, as its own role (holds the password)."""
        db = self.app.postgres
        if not db:
            return ""
        return (
            f"postgresql://{self.app_db_user}:{self.app_db_password()}"
            f"@{db.service}:5432/{quote(self.postgres_db, safe='')}"
        )

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
    def base_source(self) -> str:
        """What base images are made from, part of their tags: the mirror (mmdebstrap's),
        or Debian's image and the mirror (a base made FROM it is another image)."""
        return (
            self.debian_mirror
            if self.bases == "mmdebstrap"
            else f"{self.debian_image}+{self.debian_mirror}"
        )

    @property
    def builder(self) -> Settings:
        """The settings whose engine makes the images: this machine's when streaming."""
        return dataclasses.replace(self, docker_host="") if self.image_source == "stream" else self

    def docker_env(self) -> dict[str, str]:
        """Environment for docker commands: which engine to talk to (and, for an SSH
        host, how long its connection outlives the command: deploy/target/ssh.py)."""
        if not self.docker_host:
            return {}
        return {
            "DOCKER_HOST": self.docker_host,
            **(
                {"COLORGATE_SSH_PERSIST": str(self.ssh_persist)}
                if self.docker_host.startswith("ssh://")
                else {}
            ),
        }

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
            "COLORGATE_TRUSTED_PROXIES": ",".join(self.trusted_proxies),
            "COLORGATE_RENEW_EVERY": str(self.renew_every),
            "COLORGATE_RENEWAL_CHECK": str(self.renewal_check),
            "COLORGATE_PIDS_LIMIT": str(self.pids_limit),
            "COLORGATE_MEMORY_LIMIT": self.memory_limit,
            "COLORGATE_LOG_MAX_SIZE": self.log_max_size,
            "COLORGATE_LOG_MAX_FILES": str(self.log_max_files),
            "COLORGATE_IMAGE_PREFIX": self.image_prefix,
            "COLORGATE_MOVE_RELAY_BIND": self.move_relay_bind,
            "COLORGATE_MOVE_RELAY_PORT": str(self.move_relay_port),
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
            if any(key.startswith(prefix) and len(key) > len(prefix) for prefix in PREFIXES):
                values[key], sources[key] = value, origin
                continue
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f"did you mean {close[0]}?" if close else "see .env.example for the keys"
                raise ConfigError(f"{origin}: unknown key {key}: {hint}")
            values[key] = value
            sources[key] = origin
    for key in [
        *KEYS,
        *(
            k
            for k in environ
            if any(k.startswith(prefix) and len(k) > len(prefix) for prefix in PREFIXES)
        ),
    ]:
        if key in environ:
            values[key] = environ[key]
            sources[key] = "the environment"
    return values, sources


def load_app(root: Path, value: str, source: str | None = None) -> contract.App:
    """The app's contract, validated (ContractError names the path and the fix). A
    relative path is from the settings' directory; without one, the compose file there,
    else (in Colorgate's own checkout) the sample that ships with it."""
    if not value:
        found = contract.compose_in(root) or (
            project_root() / SAMPLE if (project_root() / SAMPLE).is_dir() else None
        )
        if found is None:
            raise ConfigError(
                f"no compose file in {root}: run colorgate in your app's directory (the one holding its "
                "compose file) or set COLORGATE_APP"
            )
        return contract.load(found)
    path = Path(value)
    return contract.load(
        path if path.is_absolute() else (root if source else project_root()) / path
    )


def validate(
    profile: str,
    root: Path,
    values: Mapping[str, str],
    sources: Mapping[str, str],
    app: contract.App | None = None,
) -> Settings:
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
    if bool(parsed["COLORGATE_MOVE_RELAY_CERT"]) != bool(parsed["COLORGATE_MOVE_RELAY_KEY"]):
        raise ConfigError(
            "COLORGATE_MOVE_RELAY_CERT and COLORGATE_MOVE_RELAY_KEY go together: set both (the relay's "
            "certificate chain and its key) or neither (the edge's certificate)"
        )
    app = app or load_app(root, str(parsed["COLORGATE_APP"]), sources.get("COLORGATE_APP"))
    if app.postgres:
        for key in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
            if not str(parsed[key]).strip():
                raise ConfigError(
                    f"{key} is missing: the app's database {app.postgres.service!r} (x-colorgate.database) needs it; "
                    f"set it in {profile_file}.local or the environment"
                )
    gate_secrets = {key: value for key, value in values.items() if key.startswith(GATE_PREFIX)}
    for key, value in gate_secrets.items():
        if profile in STRICT_PROFILES and PLACEHOLDER.search(value):
            raise ConfigError(
                f"{key} in {sources.get(key, profile_file)} is a placeholder: set a real value in {profile_file}.local or the environment"
            )
    app_secrets = {key: value for key, value in values.items() if key.startswith(SECRET_PREFIX)}
    check_app_secrets(profile, app, app_secrets, sources)
    values = {
        spec.attr or key.removeprefix("COLORGATE_").lower(): parsed[key]
        for key, spec in KEYS.items()
    }
    values["gate_secrets"], values["app_secrets"] = gate_secrets, app_secrets
    registry = parsed["COLORGATE_REGISTRY"]
    project = parsed["COLORGATE_PROJECT"] or app.name
    values.update(  # what follows from more than one key
        project=project,
        image_prefix=registry + "/"
        if registry
        else parsed["COLORGATE_IMAGE_PREFIX"] or f"{project}/",
        image_source="registry" if registry else parsed["COLORGATE_IMAGES"],
        app_path=str(app.file),
        move_relay_host=parsed["COLORGATE_MOVE_RELAY_HOST"] or parsed["COLORGATE_DOMAIN"],
    )
    return Settings(
        profile=profile, root=root, app=app, sources=dict(sources), raw=raw_values, **values
    )


def check_app_secrets(
    profile: str, app: contract.App, found: Mapping[str, str], sources: Mapping[str, str]
) -> None:
    """Each COLORGATE_SECRET_* key names a secret of the contract, by a value or a command
    (not both), and no value is a placeholder on staging or production."""
    names = {secret.key: secret for secret in app.secrets}
    for key, value in found.items():
        base = key.removesuffix("_COMMAND")
        where = sources.get(key, f".env.{profile}")
        if base not in names:
            known = ", ".join(sorted(s.name for s in app.secrets)) or "none"
            raise ConfigError(
                f"{key} in {where}: the contract names no secret {base.removeprefix(SECRET_PREFIX).lower()!r} "
                f"(x-colorgate.secrets names {known}): add it there, or remove the key"
            )
        if key == base and f"{key}_COMMAND" in found:
            raise ConfigError(
                f"{key} and {key}_COMMAND are both set ({where}, {sources.get(key + '_COMMAND')}): keep the value or the command"
            )
        if key == base and profile in STRICT_PROFILES and PLACEHOLDER.search(value):
            raise ConfigError(
                f"{key} in {where} is a placeholder: set a real value in .env.{profile}.local or the environment"
            )


SAMPLE = "examples/spa-api-postgres"


def project_root() -> Path:
    """Colorgate's own source tree (its checkout, or where the package is installed)."""
    return Path(__file__).resolve().parent.parent


SHIPPED = {
    "colorgate_parts": "compose",
    "colorgate_gates": "features",
}  # package: its directory in the source tree


def shipped(package: str) -> Path:
    """A directory Colorgate ships as package data (its own services, its built-in gates),
    where it is installed: the checkout's compose/ and features/, or a wheel's copies."""
    spec = importlib.util.find_spec(package)
    found = (
        [Path(p) for p in (spec.submodule_search_locations or []) if Path(p).is_dir()]
        if spec
        else []
    )
    return found[0] if found else project_root() / SHIPPED[package]


def settings_dir(start: Path, profile: str) -> Path:
    """Where the settings are read from, found as Compose finds its file: the first of
    `start` and its parents that holds .env.<profile>, .env.<profile>.local or a compose
    file; else `start`."""
    for directory in (start, *start.parents):
        if (
            (directory / f".env.{profile}").is_file()
            or (directory / f".env.{profile}.local").is_file()
            or contract.compose_in(directory)
        ):
            return directory
    return start


def load(
    profile: str | None = None,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the settings for `profile` (default: $COLORGATE_PROFILE or
    development). `overrides` (command-line options such as --host) win over all."""
    environ = os.environ if environ is None else environ
    profile = (profile or environ.get("COLORGATE_PROFILE") or "development").strip()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    root = root or settings_dir(Path.cwd(), profile)
    layers = [(f"Colorgate's {profile} defaults", PROFILE_DEFAULTS[profile])]
    for name in (f".env.{profile}", f".env.{profile}.local"):
        if (root / name).is_file():
            layers.append((name, parse_env_text((root / name).read_text(), name)))
    values, sources = merge_sources(layers, environ)
    for key, (option, value) in (overrides or {}).items():
        values[key], sources[key] = value, option
    settings = validate(profile, root, values, sources)
    runner.add_secret(settings.postgres_password)
    runner.add_secret(settings.local_database_url())
    if settings.postgres_password:
        runner.add_secret(settings.app_db_password())
    runner.add_secret(settings.registry_password)
    for secret in settings.gate_secrets.values():
        runner.add_secret(secret)
    for key, secret in settings.app_secrets.items():
        if not key.endswith("_COMMAND"):
            runner.add_secret(secret)
    if settings.database_url:
        runner.add_secret(unquote(urlsplit(settings.database_url).password or ""))
        runner.add_secret(settings.database_url)
    return settings
