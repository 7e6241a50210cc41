"""SSH hosts: the address in COLORGATE_DOCKER_HOST / --host, what an SSH failure means,
and the one connection a command makes to the host (`Tunnel`).

A command that targets an SSH host uses one SSH connection, opened on first use: a
control master that forwards the host's Docker socket to a socket here, in this user's
private directory. Every docker and compose call, the Engine API, the kept-open shell in
the edge and the gates' host checks (testinfra, as sessions on the master) use it, so a
release pays the SSH handshake and its round trips once, not per call. The next command
joins it; ssh ends it once no command has used it for COLORGATE_SSH_PERSIST seconds
(default 60; 0: with each command). The operator's SSH configuration (keys,
known_hosts, agent) applies; nothing needs setting up.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from deploy.errors import ColorgateError, ConfigError, DockerUnavailable

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
        return [
            "scp",
            "-q",
            *(["-P", str(self.port)] if self.port else []),
            str(source),
            f"{self.login}:{dest}",
        ]

    def hint(self) -> str:
        return shlex.join(self.ssh())


def parse(url: str) -> SshTarget:
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise ConfigError(
            f"{url or 'the host'} is not an SSH address: use --host ssh://user@host[:port]"
        )
    return SshTarget(parts.username or "", parts.hostname, parts.port)


def explain_ssh_error(target: SshTarget, text: str) -> str | None:
    """An SSH failure in `text`, as one line naming the cause and the fix (None: not one)."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (
            f"the SSH host key of {target.shown} does not match your known_hosts (a rebuilt server, or someone in between): "
            f"verify the new key, then `ssh-keygen -R` the old one and connect once with `{target.hint()}`"
        )
    if "Host key verification failed" in text:
        return f"the SSH host key of {target.shown} is not known here: check it and accept it by connecting once with `{target.hint()}`"
    if "Permission denied (" in text:
        return f"{target.shown} refused the SSH login of {target.login}: check the user, and that your key is in its authorized_keys"
    for cause in (
        "Connection refused",
        "Connection timed out",
        "No route to host",
        "Could not resolve hostname",
        "Network is unreachable",
        "Operation timed out",
    ):
        if cause in text:
            return f"cannot reach {target.shown} over SSH ({cause.lower()}): check the host name, the port and that sshd runs there"
    return None


REMOTE_SOCKET = "/var/run/docker.sock"


def engine_problem(target: SshTarget, url: str, kind: str) -> str:
    """The one line for a host whose engine cannot be used: `missing`, `denied` or `down`."""
    return {
        "missing": f"{target.shown} has no Docker: set it up with compose/scripts/server-setup.sh (`invoke server.setup --host {url}`)",
        "denied": f"the SSH user {target.login} may not use Docker there: add it to the docker group (server-setup.sh does)",
        "down": f"Docker is installed on {target.shown} but not running: start it there (`systemctl start docker`)",
    }[kind]


def private_dir(kind: str = "ssh") -> Path:
    """This user's private directory for `kind` (ssh: connections; compose: the rendered
    compose files): 0700 and owned by us, or refused, never used: another local user who
    made it first could read what is in it or swap a compose file before compose reads it."""
    base = (
        Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        / f"colorgate-{kind}-{os.getuid()}"
    )
    base.mkdir(mode=0o700, exist_ok=True)
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ColorgateError(
            f"{base} belongs to someone else or is open to others: remove it (it is Colorgate's), then retry"
        )
    return base


class Tunnel:
    """The SSH connection to `url`: `ssh` as a control master that forwards the host's
    Docker socket to `socket` here, shared by the commands run one after another (so a
    deploy, then a status, then a rollback pay one handshake), and ended by ssh itself
    once no command has used it for `persist` seconds (0: ended with the command). While a command runs it holds
    a session on it (`lifeline`, reading a pipe from this process): the connection never
    idles out under a command, and a killed command lets it go too."""

    def __init__(self, url: str, persist: int = 60):
        self.url, self.target, self.persist = url, parse(url), persist
        # one per address and per ssh setup (the ssh on PATH, HOME): another identity gets its own
        key = hashlib.sha256(
            "\0".join([url, shutil.which("ssh") or "ssh", os.environ.get("HOME", "")]).encode()
        ).hexdigest()[:16]
        self.dir = private_dir() / key
        self.socket, self.control, self.log = (
            self.dir / "docker.sock",
            self.dir / "control",
            self.dir / "ssh.log",
        )
        # what the master says once in the background (-E)
        self.master_log = self.dir / "master.log"
        self.lifeline: subprocess.Popen | None = None

    def _ssh(self, *options: str) -> list[str]:
        port = ["-p", str(self.target.port)] if self.target.port else []
        return ["ssh", *port, "-o", f"ControlPath={self.control}", *options]

    def master_command(self) -> list[str]:
        return self._ssh(
            "-f",
            "-N",
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPersist={self.persist or 1}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "ConnectTimeout=15",
            "-E",
            str(self.master_log),
            "-L",
            f"{self.socket}:{REMOTE_SOCKET}",
            "--",
            self.target.login,
        )

    def _alive(self) -> bool:
        return (
            self.control.exists()
            and self.socket.exists()
            and subprocess.run(
                self._ssh("-O", "check", "--", self.target.login),
                stdin=subprocess.DEVNULL,
                capture_output=True,
            ).returncode
            == 0
        )

    def open(self) -> None:
        """Connect (or join the connection a previous command left), or raise
        ColorgateError naming the cause."""
        started = time.monotonic()
        self.dir.mkdir(mode=0o700, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            # one master per address, even when commands start together
            fcntl.flock(lock, fcntl.LOCK_EX)
            reused = self._alive()
            if not reused:
                for stale in (self.control, self.socket, self.master_log):
                    stale.unlink(missing_ok=True)
                with open(
                    self.log, "w"
                ) as log:  # ssh -f returns once connected and forwarding, then runs on its own
                    master = subprocess.run(
                        self.master_command(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                        timeout=60,
                        check=False,
                    )
                if master.returncode != 0 or not self.socket.exists():
                    self._fail("the SSH connection ended")
            # ended by close(), not by a Ctrl-C meant for us
            self.lifeline = subprocess.Popen(
                self._ssh("-o", "ControlMaster=no", "--", self.target.login, "cat > /dev/null"),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        atexit.register(self.close)
        if not self._ping():
            self._fail("no Docker engine answered")
        logger.debug(
            "ssh: %s connection to %s in %.2fs",
            "joined the" if reused else "opened a",
            self.target.shown,
            time.monotonic() - started,
        )

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
        self.close(end=True)
        raise DockerUnavailable(why)

    def _explain(self, fallback: str) -> str:
        text = "".join(
            f.read_text(errors="replace") for f in (self.log, self.master_log) if f.exists()
        )
        explained = explain_ssh_error(self.target, text)
        if explained:
            return explained
        # the forward reached the host but not its engine: ask why
        if "open failed" in text and self.control.exists():
            probe = subprocess.run(
                self._ssh(
                    "-o",
                    "ControlMaster=no",
                    "--",
                    self.target.login,
                    f"if [ ! -S {REMOTE_SOCKET} ]; then echo missing; "
                    f"elif [ ! -w {REMOTE_SOCKET} ]; then echo denied; else echo down; fi",
                ),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            if probe in ("missing", "denied", "down"):
                return engine_problem(self.target, self.url, probe)
        last = (text.strip().splitlines() or [fallback])[-1].strip()
        return f"cannot use the Docker engine at {self.url} over SSH ({last}): try `{self.target.hint()} docker version`"

    def ssh_args(self) -> list[str]:
        """Options that make another `ssh` to the host a session on this connection."""
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}"]

    def close(self, end: bool = False) -> None:
        """This command is done with the connection; with `end` (or `persist` 0) it ends
        now, else ssh ends it when unused for `persist` seconds."""
        if self.lifeline is not None and self.lifeline.poll() is None:
            self.lifeline.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.lifeline.wait(timeout=3)
        if (end or not self.persist) and self.control.exists():
            subprocess.run(
                self._ssh("-O", "exit", "--", self.target.login),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )


_tunnels: dict[str, Tunnel] = {}


def tunnel(url: str, persist: str | None = None) -> Tunnel:
    """This process's one connection to the SSH host `url`, opened on first use (a
    forked child uses its parent's); `persist`: COLORGATE_SSH_PERSIST, when known."""
    if url not in _tunnels:
        t = Tunnel(url, int(persist) if persist and persist.isdigit() else 60)
        t.open()
        _tunnels[url] = t
    elif persist and persist.isdigit():
        _tunnels[url].persist = int(persist)
    return _tunnels[url]


def docker_host(url: str, persist: str | None = None) -> str:
    """The DOCKER_HOST that reaches the engine at `url` (ssh://: through `tunnel`)."""
    return f"unix://{tunnel(url, persist).socket}" if url.startswith("ssh://") else url
