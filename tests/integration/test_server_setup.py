"""compose/scripts/server-setup.sh, run for real in a fresh Debian container (from
Debian's mirror, packages installed by the script itself), twice: the second run
changes nothing. And it is shellcheck-clean."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy import config, images, runner

SCRIPT = config.project_root() / "compose" / "scripts" / "server-setup.sh"
# A fresh VPS: Debian's minimal base and nothing else.
VPS = images.BaseImage("vps", ("ca-certificates",))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNvbG9yZ2F0ZS10ZXN0LWtleS1ub3QtcmVhbC0xMjM0NTY deploy@ci"


def test_server_setup_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(os.sys.executable).with_name("shellcheck"))
    proc = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(scope="module")
def vps():
    settings = config.load("development")
    images.build_bases(settings, [b for b in [VPS] if not images.image_exists(settings, b.tag(settings.debian_mirror))])
    name = f"cgtestvps{os.getpid()}{secrets.token_hex(2)}"
    compose = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    if not compose.exists():
        compose = Path(shutil.which("docker-compose") or "/usr/libexec/docker/cli-plugins/docker-compose")
    runner.run(["docker", "run", "--detach", "--name", name, "--cap-add", "NET_ADMIN",
                "-v", f"{SCRIPT}:/root/server-setup.sh:ro", "-v", f"{compose.resolve()}:/root/docker-compose:ro",
                VPS.tag(settings.debian_mirror), "sleep", "infinity"])
    try:
        yield name
    finally:
        runner.run(["docker", "rm", "--force", "--volumes", name], check=False)


def setup(vps: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", "-e", "COLORGATE_COMPOSE_BINARY=/root/docker-compose", vps,
                           "sh", "/root/server-setup.sh", *args], capture_output=True, text=True, timeout=900)


def sh(vps: str, command: str) -> str:
    return runner.run(["docker", "exec", vps, "sh", "-c", command]).stdout


def state(vps: str) -> str:
    """Everything the script manages, to compare runs."""
    return sh(vps, "id deploy; cat /home/deploy/.ssh/authorized_keys /etc/ssh/sshd_config.d/10-colorgate.conf "
                   "/etc/colorgate/firewall.nft /etc/apt/apt.conf.d/20auto-upgrades /etc/docker/daemon.json; "
                   "nft list table inet colorgate; dpkg-query -W docker.io nftables unattended-upgrades openssh-server; "
                   "ls -l /usr/local/lib/docker/cli-plugins")


def test_bad_arguments_get_one_line(vps):
    proc = setup(vps)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("server-setup: error: usage: server-setup.sh DEPLOY_USER")
    proc = setup(vps, "deploy", "not-a-key")
    assert proc.returncode == 1 and "must be an SSH public key" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_setup_on_a_fresh_debian_then_again_changes_nothing(vps):
    first = setup(vps, "deploy", KEY)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "server-setup: changed: installed docker.io nftables unattended-upgrades openssh-server" in first.stdout
    after_first = state(vps)

    assert "docker" in sh(vps, "id -nG deploy").split()
    assert sh(vps, "cat /home/deploy/.ssh/authorized_keys").strip() == KEY
    assert sh(vps, "stat -c %a /home/deploy/.ssh /home/deploy/.ssh/authorized_keys").split() == ["700", "600"]
    sshd = sh(vps, "mkdir -p /run/sshd && sshd -T")
    assert "passwordauthentication no" in sshd and "kbdinteractiveauthentication no" in sshd and "pubkeyauthentication yes" in sshd
    table = sh(vps, "nft list table inet colorgate")
    assert "policy drop" in table and "tcp dport { 22, 80, 443 } accept" in table
    assert '"max-size": "10m"' in sh(vps, "cat /etc/docker/daemon.json")
    assert 'Unattended-Upgrade "1"' in sh(vps, "cat /etc/apt/apt.conf.d/20auto-upgrades")
    assert "Docker Compose version" in sh(vps, "docker compose version")

    second = setup(vps, "deploy", KEY)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "server-setup: nothing to change: the server is set up"
    assert state(vps) == after_first
