"""Remote hosts over SSH: the address in COLORGATE_DOCKER_HOST / --host, what an SSH
failure means, and `server.setup` (compose/scripts/server-setup.sh run on the host).

Everything else about a remote target goes through the Docker CLI, which tunnels to
the remote engine over SSH itself (`docker system dial-stdio`); the operator's SSH
configuration (keys, known_hosts, ControlMaster) applies.
"""

from __future__ import annotations

import platform
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from deploy import runner
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, ConfigError

SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "compose" / "scripts" / "server-setup.sh"
REMOTE_DIR = "/tmp/colorgate-setup"


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int | None

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def shown(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def ssh(self, *command: str) -> list[str]:
        return ["ssh", *(["-p", str(self.port)] if self.port else []), "--", self.login, *command]

    def scp(self, source: Path, dest: str) -> list[str]:
        return ["scp", "-q", *(["-P", str(self.port)] if self.port else []), str(source), f"{self.login}:{dest}"]

    def hint(self) -> str:
        return shlex.join(self.ssh())


def parse(url: str) -> SshTarget:
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise ConfigError(f"{url or 'the host'} is not an SSH address: use --host ssh://user@host[:port]")
    return SshTarget(parts.username or "", parts.hostname, parts.port)


def explain_ssh_error(target: SshTarget, text: str) -> str | None:
    """An SSH failure in `text`, as one line naming the cause and the fix (None: not one)."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"the SSH host key of {target.shown} does not match your known_hosts (a rebuilt server, or someone in between): "
                f"verify the new key, then `ssh-keygen -R` the old one and connect once with `{target.hint()}`")
    if "Host key verification failed" in text:
        return f"the SSH host key of {target.shown} is not known here: check it and accept it by connecting once with `{target.hint()}`"
    if "Permission denied (" in text:
        return f"{target.shown} refused the SSH login of {target.login}: check the user, and that your key is in its authorized_keys"
    for cause in ("Connection refused", "Connection timed out", "No route to host", "Could not resolve hostname",
                  "Network is unreachable", "Operation timed out"):
        if cause in text:
            return f"cannot reach {target.shown} over SSH ({cause.lower()}): check the host name, the port and that sshd runs there"
    return None


def compose_binary_for(machine: str, bundled: Path | None) -> Path | None:
    """The compose plugin to upload: the bundled one, when it suits the host's CPU."""
    return bundled if bundled and machine.strip() == platform.machine() else None


def server_setup(settings: Settings, user: str, public_key: str, compose_binary: Path | None = None) -> list[str]:
    """Upload and run server-setup.sh on the SSH host (as a user who may sudo, or root),
    with `compose_binary` (this machine's compose plugin) for a host whose distribution
    has none and whose CPU matches. Returns the script's report lines."""
    target = parse(settings.docker_host)

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
    command = f"{sudo}env {env}sh {REMOTE_DIR}/server-setup.sh {shlex.quote(user)} {shlex.quote(public_key)}; " \
              f"rc=$?; rm -rf {REMOTE_DIR}; exit $rc"
    with runner.step(f"setting up {target.shown} (server-setup.sh)"):
        out = run(target.ssh(command), "server-setup.sh").stdout
    return [line for line in out.splitlines() if line.startswith("server-setup: ")]
