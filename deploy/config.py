"""Settings: loaded once from an env profile (profiles.py finds, merges and validates
them), then passed along; and where Colorgate's own parts ship (shipped).

Sources, later ones winning:
  .env.<profile>          committed: safe defaults (development) or templates
  .env.<profile>.local    not committed: this machine's values and secrets
  the process environment for the same keys (CI secrets, test overrides)

Every problem is reported as one line that names the key, the file it came from and
the fix, before anything starts. See .env.example for every key, annotated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from deploy import contract
from deploy.target import ssh


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
