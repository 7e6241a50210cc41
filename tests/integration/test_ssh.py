"""The whole flow over SSH: Debian's openssh-server in a container on the host's
network, in front of the real Docker engine (its socket, and the docker CLI for
`docker system dial-stdio`), logged into with a key made for this run. The operator's
side gets its own HOME (key, known_hosts), as a CI runner would."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deploy import config, images, runner

from .conftest import free_port, invoke, isolated_env, remove_stack

SSHD = images.BaseImage("sshd", ("openssh-server", "iproute2"))
SOCKET = "/var/run/docker.sock"

SSHD_SCRIPT = """set -eu
ssh-keygen -A > /dev/null
group=$(getent group "$SOCKET_GID" | cut -d: -f1)
[ -n "$group" ] || { groupadd -g "$SOCKET_GID" dockerhost; group=dockerhost; }
useradd --create-home --shell /bin/bash deploy
usermod -aG "$group" deploy
install -d -m 700 -o deploy -g deploy /home/deploy/.ssh
printf '%s\\n' "$AUTHORIZED_KEY" > /home/deploy/.ssh/authorized_keys
chown deploy:deploy /home/deploy/.ssh/authorized_keys
chmod 600 /home/deploy/.ssh/authorized_keys
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -o LogLevel=VERBOSE -p "$PORT" -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no -o AllowUsers=deploy
"""


def keygen(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "colorgate-test", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclasses.dataclass
class SshHost:
    url: str
    port: int
    container: str


@contextlib.contextmanager
def ssh_host(authorized_key: str, with_docker: bool = True, socket: str = SOCKET):
    """An SSH server on 127.0.0.1:<free port> whose `deploy` user reaches the engine at
    `socket` (not `with_docker`: a host with neither the engine's socket nor the CLI)."""
    settings = config.load("development")
    if not images.image_exists(settings, SSHD.tag(settings.debian_mirror)):
        images.build_bases(settings, [SSHD])
    port = free_port()
    name = f"cgtestsshd{os.getpid()}{secrets.token_hex(2)}"
    mounts = ["-v", f"{socket}:{SOCKET}", "-v", f"{shutil.which('docker')}:/usr/bin/docker:ro"] if with_docker else []
    try:  # a container that docker created but could not start is removed too
        runner.run(["docker", "run", "--detach", "--name", name, "--network", "host", *mounts,
                    "-e", f"SOCKET_GID={os.stat(socket).st_gid}", "-e", f"PORT={port}", "-e", "AUTHORIZED_KEY",
                    SSHD.tag(settings.debian_mirror), "sh", "-c", SSHD_SCRIPT], env={"AUTHORIZED_KEY": authorized_key})
        for _ in range(100):
            if subprocess.run(["ssh-keyscan", "-T", "1", "-p", str(port), "127.0.0.1"], capture_output=True).stdout:
                break
            time.sleep(0.2)
        yield SshHost(f"ssh://deploy@127.0.0.1:{port}", port, name)
    finally:
        runner.run(["docker", "rm", "--force", "--volumes", name], check=False)


def operator_home(root: Path, port: int, known: bool = True) -> Path:
    """An operator's SSH setup of its own: key, known_hosts, strict host key checking.
    OpenSSH reads ~ from the password database, not $HOME, so `ssh` on PATH is the
    real one given this setup's config file (-F)."""
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if known:
        scan = subprocess.run(["ssh-keyscan", "-p", str(port), "127.0.0.1"], capture_output=True, text=True).stdout
        (home / ".ssh" / "known_hosts").write_text(scan)
    (home / ".ssh" / "config").write_text(
        f"Host *\n  IdentityFile {home}/.ssh/id_ed25519\n  IdentitiesOnly yes\n  UserKnownHostsFile {home}/.ssh/known_hosts\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n")
    (home / "bin").mkdir(exist_ok=True)
    wrapper = home / "bin" / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {home}/.ssh/config "$@"\n')
    wrapper.chmod(0o755)
    return home


def operator_env(env: dict[str, str], home: Path) -> dict[str, str]:
    return {**env, "PATH": f"{home}/bin:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def remote(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("ssh")
    key = keygen(root / "home" / ".ssh" / "id_ed25519")
    with ssh_host(key) as host:
        home = operator_home(root, host.port)
        env = operator_env(isolated_env("ssh"), home)
        settings = config.load("development", environ={**os.environ, **env})
        try:
            yield host, env, home
        finally:
            remove_stack(settings)  # the same engine, reached directly


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def logins(host: SshHost) -> tuple[int, int]:
    """SSH connections the host's sshd accepted so far, and the command sessions run
    (sessions multiplexed on a connection are not logins)."""
    log = runner.run(["docker", "logs", host.container], check=False).stderr
    return log.count("Accepted publickey for deploy"), log.count("Starting session: command for deploy")


def test_a_release_travels_over_ssh(remote):
    host, env, _ = remote
    first = logins(host)
    up = invoke("up", "--host", host.url, env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    assert f"engine {host.url}" in up.stdout and "active color: blue (v1)" in up.stdout
    before = logins(host)
    deployed = invoke("deploy", "--host", host.url, env=env)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    # one connection for the whole gated release: every docker and compose call, the Engine API,
    # the edge's shell, and the gates' host checks (testinfra) went through it
    after = logins(host)
    assert after[0] - before[0] == 1
    assert after[1] - before[1] > 2  # the tunnel's own session, and the host checks' (`ss`...) on the host
    assert "PASS  No public database port: Nothing on the host answers on the database port" in deployed.stderr
    assert "deploy: blue v1 -> green v2: switched" in deployed.stdout
    # the lock, the history and the backups live on the target
    history = invoke("history", "--host", host.url, "--json", env=env)
    assert '"outcome": "switched"' in history.stdout
    backup = invoke("db.backup", "--host", host.url, env=env)
    assert backup.returncode == 0, backup.stderr
    listed = invoke("db.backups", "--host", host.url, env=env)
    assert backup.stdout.split()[1].rstrip(":") in listed.stdout
    certificate = invoke("tls.status", "--host", host.url, env=env)
    assert certificate.returncode == 0 and "local CA (made by the edge)" in certificate.stdout, certificate.stderr
    back = invoke("rollback", "--host", host.url, env=env)
    assert back.returncode == 0 and "rollback: green v2 -> blue v1: switched" in back.stdout, back.stderr[-2000:]
    # seven commands, seven connections
    assert logins(host)[0] - first[0] == 7


def test_ssh_problems_are_one_line_before_anything_changes(remote, tmp_path):
    host, env, home = remote
    # nothing listens there
    line = one_line(invoke("status", "--host", f"ssh://deploy@127.0.0.1:{free_port()}", env=env))
    assert "cannot reach 127.0.0.1" in line and "connection refused" in line
    # a key the host does not know
    other = tmp_path / "other"
    keygen(other / "home" / ".ssh" / "id_ed25519")
    wrong_key = operator_home(other, host.port)
    line = one_line(invoke("status", "--host", host.url, env=operator_env(env, wrong_key)))
    assert line.startswith(f"colorgate: 127.0.0.1:{host.port} refused the SSH login of deploy@127.0.0.1: check the user")
    # a host key that changed since it was recorded
    spoofed = tmp_path / "spoofed"
    operator_home(spoofed, host.port, known=False)
    shutil.copy(home / ".ssh" / "id_ed25519", spoofed / "home" / ".ssh" / "id_ed25519")
    fake = keygen(spoofed / "hostkey").rsplit(" ", 1)[0]
    (spoofed / "home" / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{host.port} {fake}\n")
    line = one_line(invoke("status", "--host", host.url, env=operator_env(env, spoofed / "home")))
    assert "does not match your known_hosts" in line
    # a host with SSH but no Docker
    with ssh_host((home / ".ssh" / "id_ed25519.pub").read_text().strip(), with_docker=False) as bare:
        scan = subprocess.run(["ssh-keyscan", "-p", str(bare.port), "127.0.0.1"], capture_output=True, text=True).stdout
        with open(home / ".ssh" / "known_hosts", "a") as f:
            f.write(scan)
        line = one_line(invoke("deploy", "--host", bare.url, env=env))
    assert f"127.0.0.1:{bare.port} has no Docker: set it up with compose/scripts/server-setup.sh" in line
