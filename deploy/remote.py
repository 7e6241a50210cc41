"""`server.setup`: compose/scripts/server-setup.sh run on an SSH host, with the compose
plugin uploaded where the host's distribution has none. (The address, its errors and
the one connection a command makes: deploy/target/ssh.py.)
"""

from __future__ import annotations

import dataclasses
import platform
import shlex
from pathlib import Path

from deploy import config
from deploy.config import Settings
from deploy.errors import BAD_INPUT, BadInput, ColorgateError, CommandError, DockerUnavailable
from deploy.target import runner
from deploy.target.ssh import SshTarget, explain_ssh_error, parse

SETUP_SCRIPT = config.shipped("colorgate_parts") / "scripts" / "server-setup.sh"
REMOTE_DIR = "/tmp/colorgate-setup"


def compose_binary_for(machine: str, bundled: Path | None) -> Path | None:
    """The compose plugin to upload: the bundled one, when it suits the host's CPU."""
    return bundled if bundled and machine.strip() == platform.machine() else None


def server_setup(
    settings: Settings,
    user: str,
    public_key: str,
    compose_binary: Path | None = None,
    ssh_port: int | None = None,
    keep_root_login: bool = False,
    swarm_peers: str = "",
) -> list[str]:
    """Upload and run server-setup.sh on the SSH host (as a user who may sudo, or root),
    with `compose_binary` (this machine's compose plugin) for a host whose distribution
    has none and whose CPU matches; sshd then listens on `ssh_port` (default: the port this
    host is reached on: a setup never moves it unasked). Once `user` logs in with this
    machine's key and is in the docker group, password logins are switched off, and root's
    SSH login (unless `keep_root_login`); until then both stay as they were. `swarm_peers`
    (addresses or CIDRs) makes it a Swarm node whose peers reach Swarm's ports. Returns its report lines."""
    target = parse(settings.docker_host)
    port = ssh_port or target.port or 22
    env = _upload(target, compose_binary)
    if swarm_peers:
        env += f"COLORGATE_SWARM_PEERS={shlex.quote(swarm_peers)} "
    script = (
        f"sh {REMOTE_DIR}/server-setup.sh {shlex.quote(user)} {shlex.quote(public_key)} {int(port)}"
    )
    sudo = "" if target.user == "root" else "sudo -n "
    cleaned = False
    try:
        with runner.step(f"setting up {target.shown} (server-setup.sh)"):
            out = _on(target, target.ssh(f"{sudo}env {env}{script}"), "server-setup.sh").stdout
        lines = [line for line in out.splitlines() if line.startswith("server-setup: ")]
        deploy = dataclasses.replace(target, user=user, port=port if port != 22 else target.port)
        works = runner.run(
            deploy.ssh("id", "-nG"), check=False, what=f"logging in as {user}", timeout=60
        )
        if works.returncode != 0 or "docker" not in works.stdout.split():
            return [
                *lines,
                f"server-setup: password and root logins left as they were: {user} could not log in from here "
                f"with your key and use Docker ({deploy.hint()}); run server.setup again once it can",
            ]
        locked = _logins_off(target, user, f"{sudo}env", f"{env}{script}", keep_root_login)
        cleaned = True
        return [
            line
            for line in lines
            if not line.endswith("nothing to change: the server is set up") or not locked
        ] + locked
    finally:
        if not cleaned:
            runner.run(target.ssh(f"rm -rf {REMOTE_DIR}"), check=False, timeout=60)


def _upload(target: SshTarget, compose_binary: Path | None) -> str:
    """server-setup.sh into a work directory on the host, with the compose plugin where
    the host needs this machine's; the variables the script then reads."""
    machine = _on(target, target.ssh("uname", "-m"), "uname on the host").stdout
    _on(
        target,
        target.ssh("mkdir", "-p", "-m", "700", REMOTE_DIR),
        "making a work directory on the host",
    )
    _on(
        target,
        target.scp(SETUP_SCRIPT, f"{REMOTE_DIR}/server-setup.sh"),
        "uploading server-setup.sh",
    )
    env = ""
    binary = compose_binary_for(machine, compose_binary)
    if binary:
        _on(
            target,
            target.scp(binary, f"{REMOTE_DIR}/docker-compose"),
            "uploading the compose plugin",
        )
        env = f"COLORGATE_COMPOSE_BINARY={REMOTE_DIR}/docker-compose "
    return env


def _logins_off(
    target: SshTarget, user: str, env: str, script: str, keep_root_login: bool
) -> list[str]:
    """server-setup.sh again (`env` then `script`), switching password logins (and root's,
    unless `keep_root_login`) off, its work directory removed in the same session: root may
    not log in again. Returns the lines it changed."""
    root = "prohibit-password" if keep_root_login else "no"
    with runner.step(
        f"{user} logs in and uses Docker: password logins off"
        + ("" if keep_root_login else ", and root's")
    ):
        switches = f"COLORGATE_PASSWORD_LOGIN=no COLORGATE_ROOT_LOGIN={root} "
        out = _on(
            target,
            target.ssh(f"{env} {switches}{script}; rc=$?; rm -rf {REMOTE_DIR}; exit $rc"),
            "server-setup.sh",
        ).stdout
    return [line for line in out.splitlines() if line.startswith("server-setup: changed")]


def _on(target: SshTarget, cmd: list[str], what: str, input: str | None = None):
    """A command to the host, its failure one line: the SSH error explained, or the
    script's last `server-setup:` line (BadInput when it refused an argument)."""
    try:
        return runner.run(cmd, what=what, input=input, timeout=1800)
    except CommandError as exc:
        text = exc.stderr + exc.stdout
        explained = explain_ssh_error(target, text)
        if explained and target.user == "root" and "refused the SSH login" in explained:
            explained += (
                " (a server set up before has root's login off once its deploy user worked: "
                "run it as a user who may sudo, --host ssh://USER@HOST)"
            )
        if explained:
            raise DockerUnavailable(explained) from None
        lines = [line for line in text.strip().splitlines() if line.startswith("server-setup: ")]
        kind = BadInput if exc.returncode == BAD_INPUT else ColorgateError
        raise kind(f"on {target.shown}: " + (lines[-1] if lines else str(exc))) from None
