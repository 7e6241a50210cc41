"""`server.setup`: compose/scripts/server-setup.sh run on an SSH host, with the compose
plugin uploaded where the host's distribution has none. (The address, its errors and
the one connection a command makes: deploy/ssh.py.)
"""

from __future__ import annotations

import platform
import shlex
from pathlib import Path

from deploy import runner
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError
from deploy.ssh import explain_ssh_error, parse

SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "compose" / "scripts" / "server-setup.sh"
REMOTE_DIR = "/tmp/colorgate-setup"


def compose_binary_for(machine: str, bundled: Path | None) -> Path | None:
    """The compose plugin to upload: the bundled one, when it suits the host's CPU."""
    return bundled if bundled and machine.strip() == platform.machine() else None


def server_setup(settings: Settings, user: str, public_key: str, compose_binary: Path | None = None,
                 ssh_port: int | None = None) -> list[str]:
    """Upload and run server-setup.sh on the SSH host (as a user who may sudo, or root),
    with `compose_binary` (this machine's compose plugin) for a host whose distribution
    has none and whose CPU matches. sshd listens on `ssh_port` afterwards (default: the
    port this host is reached on, so a setup never moves it unasked). Returns the
    script's report lines."""
    target = parse(settings.docker_host)
    port = ssh_port or target.port or 22

    def run(cmd: list[str], what: str, input: str | None = None):
        try:
            return runner.run(cmd, what=what, input=input, timeout=1800)
        except CommandError as exc:
            text = exc.stderr + exc.stdout
            explained = explain_ssh_error(target, text)
            if explained:
                raise ColorgateError(explained) from None
            lines = [line for line in text.strip().splitlines() if line.startswith("server-setup: ")]
            raise ColorgateError(f"on {target.shown}: " + (lines[-1] if lines else str(exc))) from None

    machine = run(target.ssh("uname", "-m"), "uname on the host").stdout
    run(target.ssh("mkdir", "-p", "-m", "700", REMOTE_DIR), "making a work directory on the host")
    run(target.scp(SETUP_SCRIPT, f"{REMOTE_DIR}/server-setup.sh"), "uploading server-setup.sh")
    env = ""
    binary = compose_binary_for(machine, compose_binary)
    if binary:
        run(target.scp(binary, f"{REMOTE_DIR}/docker-compose"), "uploading the compose plugin")
        env = f"COLORGATE_COMPOSE_BINARY={REMOTE_DIR}/docker-compose "
    sudo = "" if target.user == "root" else "sudo -n "
    command = f"{sudo}env {env}sh {REMOTE_DIR}/server-setup.sh {shlex.quote(user)} {shlex.quote(public_key)} {int(port)}; " \
              f"rc=$?; rm -rf {REMOTE_DIR}; exit $rc"
    with runner.step(f"setting up {target.shown} (server-setup.sh)"):
        out = run(target.ssh(command), "server-setup.sh").stdout
    return [line for line in out.splitlines() if line.startswith("server-setup: ")]
