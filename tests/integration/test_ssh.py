"""The whole flow over SSH: Debian's openssh-server in a container on the host's
network, in front of the real Docker engine (its socket, and the docker CLI for
`docker system dial-stdio`), logged into with a key made for this run. The operator's
side gets its own HOME (key, known_hosts), as a CI runner would."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from benchmarks.remote_and_idle import SshHost, keygen, operator_env, operator_home, ssh_host
from deploy import bases, config, errors, profiles
from deploy.target import runner

from .conftest import free_port, invoke, isolated_env, remove_stack


@pytest.fixture(scope="module")
def remote(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("ssh")
    key = keygen(root / "home" / ".ssh" / "id_ed25519")
    with ssh_host(key) as host:
        home = operator_home(root, host.port)
        env = operator_env(isolated_env("ssh"), home)
        settings = profiles.load("development", environ={**os.environ, **env})
        try:
            yield host, env, home
        finally:
            remove_stack(settings)  # the same engine, reached directly


def one_line(proc: subprocess.CompletedProcess, code: int = errors.UNREACHABLE) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and lines and "Traceback" not in proc.stderr, (
        proc.returncode,
        proc.stderr,
    )
    return lines[-1]


def logins(host: SshHost) -> tuple[int, int]:
    """SSH connections the host's sshd accepted so far, and the command sessions run
    (sessions multiplexed on a connection are not logins)."""
    log = runner.run(["docker", "logs", host.container], check=False).stderr
    return log.count("Accepted publickey for deploy"), log.count(
        "Starting session: command for deploy"
    )


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
    # no new connection: the deploy joined the one `up` left open; its calls went through it
    # (the command's own session on it, and the host checks' (`ss`...) ran on the host as sessions)
    assert after[0] - before[0] == 0
    assert after[1] - before[1] > 2
    assert (
        "PASS  No public database port: Nothing on the host answers on the database port"
        in deployed.stderr
    )
    assert "deploy: blue v1 -> green v2: switched" in deployed.stdout
    # the lock, the history and the backups live on the target
    history = invoke("history", "--host", host.url, "--json", env=env)
    assert '"outcome": "switched"' in history.stdout
    backup = invoke("db.backup", "--host", host.url, env=env)
    assert backup.returncode == 0, backup.stderr
    listed = invoke("db.backups", "--host", host.url, env=env)
    assert backup.stdout.split()[1].rstrip(":") in listed.stdout
    certificate = invoke("tls.status", "--host", host.url, env=env)
    assert certificate.returncode == 0 and "local CA (made by the edge)" in certificate.stdout, (
        certificate.stderr
    )
    back = invoke("rollback", "--host", host.url, env=env)
    assert back.returncode == 0 and "rollback: green v2 -> blue v1: switched" in back.stdout, (
        back.stderr[-2000:]
    )
    # seven commands, one connection; the last command (COLORGATE_SSH_PERSIST=0) ends it
    assert logins(host)[0] - first[0] == 1
    ended = invoke("status", "--host", host.url, env={**env, "COLORGATE_SSH_PERSIST": "0"})
    assert ended.returncode == 0, ended.stderr
    log = runner.run(["docker", "logs", host.container], check=False).stderr
    assert log.count("Disconnected from user deploy") == log.count(
        "Accepted publickey for deploy"
    ), log[-3000:]


def test_an_app_without_a_database_travels_over_ssh_too(remote):
    """Another app than the default one (the static site: another service, port and
    health path, no database), released over the same SSH host."""
    host, _, home = remote
    env = operator_env(
        {
            **isolated_env("sshsite"),
            "COLORGATE_APP": str(config.project_root() / "examples" / "static-site"),
        },
        home,
    )
    settings = profiles.load("development", environ={**os.environ, **env})
    bases.build_bases(settings, bases.missing_bases(settings))
    try:
        up = invoke("up", "--host", host.url, env=env)
        assert up.returncode == 0 and "active color: blue (v1)" in up.stdout, up.stderr[-3000:]
        deployed = invoke("deploy", "--host", host.url, env=env)
        assert (
            deployed.returncode == 0 and "deploy: blue v1 -> green v2: switched" in deployed.stdout
        ), deployed.stderr[-3000:]
        assert "PASS  The static site: An unknown page is not found" in deployed.stderr, (
            deployed.stderr[-3000:]
        )
        assert (
            "PASS  Hardening: The color under test and the edge run locked down" in deployed.stderr
        )
        back = invoke("rollback", "--no-gates", "--host", host.url, env=env)
        assert back.returncode == 0 and "rollback: green v2 -> blue v1: switched" in back.stdout, (
            back.stderr[-2000:]
        )
        assert "declares no database" in one_line(
            invoke("db.backup", "--host", host.url, env=env), errors.BAD_INPUT
        )
    finally:
        remove_stack(settings)


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
    assert line.startswith(
        f"colorgate: 127.0.0.1:{host.port} refused the SSH login of deploy@127.0.0.1: check the user"
    )
    # a host key that changed since it was recorded
    spoofed = tmp_path / "spoofed"
    operator_home(spoofed, host.port, known=False)
    shutil.copy(home / ".ssh" / "id_ed25519", spoofed / "home" / ".ssh" / "id_ed25519")
    fake = keygen(spoofed / "hostkey").rsplit(" ", 1)[0]
    (spoofed / "home" / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{host.port} {fake}\n")
    line = one_line(invoke("status", "--host", host.url, env=operator_env(env, spoofed / "home")))
    assert "does not match your known_hosts" in line
    # a host with SSH but no Docker
    with ssh_host(
        (home / ".ssh" / "id_ed25519.pub").read_text().strip(), with_docker=False
    ) as bare:
        scan = subprocess.run(
            ["ssh-keyscan", "-p", str(bare.port), "127.0.0.1"], capture_output=True, text=True
        ).stdout
        with open(home / ".ssh" / "known_hosts", "a") as f:
            f.write(scan)
        line = one_line(invoke("deploy", "--host", bare.url, env=env))
    assert (
        f"127.0.0.1:{bare.port} has no Docker: set it up with compose/scripts/server-setup.sh"
        in line
    )
