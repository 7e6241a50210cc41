"""SSH hosts: the address in COLORGATE_DOCKER_HOST / --host, what an SSH failure means,
and the one connection a command makes to the host (`Tunnel`).

A command that targets an SSH host opens one SSH connection, on first use, and ends it
when it exits: a control master that forwards the host's Docker socket to a socket of
its own here. Every docker and compose call, the Engine API, the kept-open shell in the
edge and the gates' host checks (testinfra, through the master) use that connection, so
a release pays the SSH handshake and its round trips once, not per call. The
operator's SSH configuration (keys, known_hosts, agent) applies; nothing needs setting up.
"""

from __future__ import annotations

import atexit
import logging
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from deploy.errors import ColorgateError, ConfigError

logger = logging.getLogger("colorgate")


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


REMOTE_SOCKET = "/var/run/docker.sock"


class Tunnel:
    """One SSH connection to `url` for this process: `ssh` as a control master that
    forwards the host's Docker socket to `socket` here. Its remote command reads its
    input until this process ends, so the connection never outlives the command (not
    even a killed one)."""

    def __init__(self, url: str):
        self.url, self.target = url, parse(url)
        self.dir = Path(tempfile.mkdtemp(prefix="colorgate-ssh-"))  # 0700: only this user reaches the socket
        self.socket, self.control, self.log = self.dir / "docker.sock", self.dir / "control", self.dir / "ssh.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        port = ["-p", str(self.target.port)] if self.target.port else []
        return ["ssh", *port, "-o", "ControlMaster=yes", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=no",
                "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-o", "ConnectTimeout=15", "-L", f"{self.socket}:{REMOTE_SOCKET}", "--", self.target.login, "cat > /dev/null"]

    def open(self) -> None:
        """Connect, or raise ColorgateError naming the cause."""
        started = time.monotonic()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)  # ended by close(), not by a Ctrl-C meant for us
        atexit.register(self.close)
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() - started > 30:
                self._fail("the SSH connection ended")
            time.sleep(0.01)
        if not self._ping():
            self._fail("no Docker engine answered")
        logger.debug("ssh: one connection to %s in %.2fs", self.target.shown, time.monotonic() - started)

    def _ping(self) -> bool:
        for _ in range(3):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(15)
                    s.connect(str(self.socket))
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    if b" 200 " in s.recv(64):
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def _fail(self, fallback: str) -> None:
        why = self._explain(fallback)
        self.close()
        raise ColorgateError(why)

    def _explain(self, fallback: str) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        explained = explain_ssh_error(self.target, text)
        if explained:
            return explained
        host = self.target.shown
        if "open failed" in text:  # the forward reached the host but not its engine: ask the host why
            probe = subprocess.run(["ssh", *self.ssh_args(), *(["-p", str(self.target.port)] if self.target.port else []),
                                    "--", self.target.login, f"if [ ! -S {REMOTE_SOCKET} ]; then echo missing; "
                                    f"elif [ ! -w {REMOTE_SOCKET} ]; then echo denied; else echo down; fi"],
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30).stdout.strip()
            if probe == "missing":
                return f"{host} has no Docker: set it up with compose/scripts/server-setup.sh (`invoke server.setup --host {self.url}`)"
            if probe == "denied":
                return f"the SSH user {self.target.login} may not use Docker there: add it to the docker group (server-setup.sh does)"
            if probe == "down":
                return f"Docker is installed on {host} but not running: start it there (`systemctl start docker`)"
        last = (text.strip().splitlines() or [fallback])[-1].strip()
        return f"cannot use the Docker engine at {self.url} over SSH ({last}): try `{self.target.hint()} docker version`"

    def ssh_args(self) -> list[str]:
        """Options that make another `ssh` to the host a session on this connection."""
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}"]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # the remote `cat` ends, and the connection with it
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_tunnels: dict[str, Tunnel] = {}


def tunnel(url: str) -> Tunnel:
    """This process's one connection to the SSH host `url`, opened on first use (a
    forked child uses its parent's)."""
    if url not in _tunnels:
        t = Tunnel(url)
        t.open()
        _tunnels[url] = t
    return _tunnels[url]


def docker_host(url: str) -> str:
    """The DOCKER_HOST that reaches the engine at `url` (ssh://: through `tunnel`)."""
    return f"unix://{tunnel(url).socket}" if url.startswith("ssh://") else url
