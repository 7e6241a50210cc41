"""A Docker Swarm on one machine, for tests: several Docker engines, each in
a container made from Debian's docker.io, on a bridge network of their own.

`--privileged` is refused on these machines, so each engine gets the capabilities
dockerd needs by name, no seccomp filter, the host's cgroup mount and a tmpfs for
/var/lib/docker (overlay2 on it). Swarm's virtual IPs need IPVS, which these kernels
lack: services use `endpoint_mode: dnsrr` (a name resolves to its tasks' addresses).
Nothing can be pulled from outside here: images are sent to every node (`docker save |
load`), or, with `registry`, pushed by this machine to Debian's docker-registry on its
loopback and pulled by every node from their own loopback (a forwarder in each node to
this process's forwarder on the network's gateway), the same name everywhere, over the
plain HTTP that engines allow for loopback registries. The manager's engine also
listens on tcp (its network only) for COLORGATE_DOCKER_HOST, and every engine runs
with the daemon.json that server-setup.sh writes on a Swarm node (no-new-privileges,
no live-restore), so the Swarm tests also show that a node set up so forms a Swarm.
Everything is removed on the way out: the services and containers inside each engine
first (their cgroups go with them), then the engines and their network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx

from deploy import bases, remote
from deploy.config import Settings
from deploy.target import runner

from .conftest import free_port

ENGINE = bases.BaseImage("dockerd", ("docker.io", "iptables", "ca-certificates", "procps", "socat"))
ENGINE_PORT = 2375
# The engines here (containers without --privileged) cannot run IPsec, so a stack's
# overlay networks are left unencrypted (COLORGATE_SWARM_ENCRYPT, on by default): an
# encrypted one connects nothing between these nodes.
IN_THE_CLEAR = {"COLORGATE_SWARM_ENCRYPT": "no"}
CAPS = (
    "SYS_ADMIN",
    "NET_ADMIN",
    "SYS_MODULE",
    "SYS_PTRACE",
    "MKNOD",
    "NET_RAW",
    "SYS_CHROOT",
    "SETFCAP",
    "AUDIT_WRITE",
    "IPC_LOCK",
    "SYS_NICE",
)


def node_daemon_json() -> str:
    """Docker's settings server-setup.sh writes on a Swarm node (--swarm-peers)."""
    found = re.search(r"^swarm_node='(.*)'$", remote.SETUP_SCRIPT.read_text(), re.MULTILINE)
    assert found, "server-setup.sh no longer names a Swarm node's daemon.json `swarm_node='...'`"
    return found.group(1)


@dataclasses.dataclass
class Cluster:
    network: str
    nodes: list[str]  # engine containers; the first is the manager
    address: str = ""  # the manager's, on the cluster's network
    registry: str = ""  # 127.0.0.1:PORT, the same for this machine and every node (with `registry`)
    gateway: str = ""  # this machine's address on the cluster's network
    socket: str = ""  # the manager's engine on this machine's filesystem (with `socket_dir`)
    # ends the forwarders
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def docker_host(self) -> str:
        """The manager's engine, for COLORGATE_DOCKER_HOST."""
        return f"tcp://{self.address}:{ENGINE_PORT}"

    def docker(self, node: str, *args: str, input: str | bytes | None = None, check: bool = True):
        """`docker ARGS` against one node's engine."""
        return runner.run(["docker", "exec", "-i", node, "docker", *args], input=input, check=check)

    def manager(self, *args: str, check: bool = True):
        return self.docker(self.nodes[0], *args, check=check)

    def send_image(self, tag: str) -> None:
        """Put an image of the host's engine on every node (what a registry would do)."""
        for node in self.nodes:
            runner.run(
                [
                    "sh",
                    "-c",
                    'docker save "$1" | docker exec -i "$2" docker load -q',
                    "send",
                    tag,
                    node,
                ],
                what=f"sending {tag} to {node}",
            )

    def reach_loopback(self, port: int) -> None:
        """This machine's 127.0.0.1:`port` at 127.0.0.1:`port` in every node (a registry,
        an ACME server): a forwarder on the network's gateway, socat in each node."""
        _forward((self.gateway, port), ("127.0.0.1", port), self.stop)
        for node in self.nodes:
            runner.run(
                [
                    "docker",
                    "exec",
                    "--detach",
                    node,
                    "socat",
                    f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                    f"TCP:{self.gateway}:{port}",
                ]
            )

    def publish_here(self, port: int) -> None:
        """The manager's `port` at this machine's 127.0.0.1:`port` (where a test CA fetches challenges)."""
        _forward(("127.0.0.1", port), (self.address, port), self.stop)

    def tasks(self, service: str) -> list[tuple[str, str]]:
        """(node hostname, current state) of each of the service's tasks."""
        out = self.manager(
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ).stdout
        return [tuple(line.split(" ", 1)) for line in out.splitlines() if line.strip()]

    def wait_running(
        self, service: str, replicas: int, seconds: float = 60
    ) -> list[tuple[str, str]]:
        deadline = time.monotonic() + seconds
        while True:
            found = self.tasks(service)
            if len([t for t in found if t[1].startswith("Running")]) >= replicas:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{service}: {replicas} tasks not running after {seconds:.0f}s: {found}"
                )
            time.sleep(0.5)


def _forward(
    listen: tuple[str, int], to: tuple[str, int], stop: threading.Event
) -> threading.Thread:
    """Accept on `listen` and relay each connection to `to`, until `stop`."""
    server = socket.create_server(listen)
    server.settimeout(0.5)

    def pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(to, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()  # nothing there (yet): this connection fails, the forwarder goes on
                    continue
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _registry() -> Iterator[int]:
    """Debian's docker-registry on 127.0.0.1:<free port>, without authentication (the
    registry test covers that), its storage removed afterwards."""
    binary = shutil.which("docker-registry")
    if not binary:
        raise AssertionError(
            "Debian's docker-registry is not installed: `make test-deps` installs it"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cgswarm-registry-") as root:
        with open(f"{root}/config.yml", "w") as f:
            f.write(
                f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {root}/data}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n"
            )
        proc = subprocess.Popen(
            [binary, "serve", f"{root}/config.yml"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _engine_up(node: str) -> bool:
    return (
        runner.run(
            ["docker", "exec", node, "docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
            check=False,
        ).returncode
        == 0
    )


@contextlib.contextmanager
def swarm(
    settings: Settings, size: int = 2, registry: bool = False, socket_dir: str = ""
) -> Iterator[Cluster]:
    """`size` engines in a Swarm (the first manages it), with a registry they all pull
    from when asked, removed afterwards. With `socket_dir`, the manager's engine also
    listens on the socket `socket_dir`/docker.sock of this machine (for an sshd in front)."""
    bases.build_bases(settings, [ENGINE])
    run_id = f"cgswarm{secrets.token_hex(3)}"
    cluster = Cluster(f"{run_id}-net", [f"{run_id}-node{n}" for n in range(1, size + 1)])
    try:
        runner.run(
            [
                "docker",
                "network",
                "create",
                "--label",
                f"org.colorgate.swarm={run_id}",
                cluster.network,
            ]
        )
        for n, node in enumerate(cluster.nodes, 1):
            runner.run(
                [
                    "docker",
                    "run",
                    "--detach",
                    "--name",
                    node,
                    "--hostname",
                    f"node{n}",
                    "--network",
                    cluster.network,
                    "--label",
                    f"org.colorgate.swarm={run_id}",
                    *(f"--cap-add={cap}" for cap in CAPS),
                    "--security-opt",
                    "seccomp=unconfined",
                    "--security-opt",
                    "apparmor=unconfined",
                    "-v",
                    "/sys/fs/cgroup:/sys/fs/cgroup",
                    "--tmpfs",
                    "/var/lib/docker:exec",
                    "--tmpfs",
                    "/run",
                    *(["-v", f"{socket_dir}:/run/outside"] if n == 1 and socket_dir else []),
                    "-e",
                    f"DAEMON_JSON={node_daemon_json()}",
                    ENGINE.tag(settings.base_source),
                    "sh",
                    "-c",
                    'mkdir -p /etc/docker && printf "%s\\n" "$DAEMON_JSON" > /etc/docker/daemon.json && exec dockerd "$@"',
                    "dockerd",
                    "--host",
                    "unix:///var/run/docker.sock",
                    *(["--host", f"tcp://0.0.0.0:{ENGINE_PORT}"] if n == 1 else []),
                    *(
                        ["--host", "unix:///run/outside/docker.sock"]
                        if n == 1 and socket_dir
                        else []
                    ),
                    "--storage-driver",
                    "overlay2",
                ]
            )
        deadline = time.monotonic() + 60
        while not all(_engine_up(node) for node in cluster.nodes):
            if time.monotonic() > deadline:
                logs = runner.run(["docker", "logs", "--tail", "20", cluster.nodes[0]], check=False)
                raise AssertionError(
                    f"the engines did not start within 60 s: {logs.stdout[-1500:]}{logs.stderr[-1500:]}"
                )
            time.sleep(0.5)
        address = runner.run(
            [
                "docker",
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                cluster.nodes[0],
            ]
        ).stdout.strip()
        cluster.address = address
        cluster.socket = f"{socket_dir}/docker.sock" if socket_dir else ""
        cluster.gateway = runner.run(
            [
                "docker",
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                cluster.network,
            ]
        ).stdout.strip()
        cluster.manager("swarm", "init", "--advertise-addr", address)
        token = cluster.manager("swarm", "join-token", "-q", "worker").stdout.strip()
        for node in cluster.nodes[1:]:
            cluster.docker(node, "swarm", "join", "--token", token, f"{address}:2377")
        with contextlib.ExitStack() as extra:
            if registry:
                port = extra.enter_context(_registry())
                cluster.reach_loopback(port)
                cluster.registry = f"127.0.0.1:{port}"
            yield cluster
    finally:
        cluster.stop.set()
        for node in cluster.nodes:  # what runs inside first, so that its cgroups go with it
            runner.run(
                [
                    "docker",
                    "exec",
                    node,
                    "sh",
                    "-c",
                    "docker service rm $(docker service ls -q) 2>/dev/null; "
                    "docker rm -f $(docker ps -aq) 2>/dev/null; true",
                ],
                check=False,
            )
        runner.run(["docker", "rm", "--force", "--volumes", *cluster.nodes], check=False)
        runner.run(["docker", "network", "rm", cluster.network], check=False)
