"""A Docker Swarm on one machine, for tests (issue #15): several Docker engines, each in
a container made from Debian's docker.io, on a bridge network of their own.

`--privileged` is refused on these machines, so each engine gets the capabilities
dockerd needs by name, no seccomp filter, the host's cgroup mount and a tmpfs for
/var/lib/docker (overlay2 on it). Swarm's virtual IPs need IPVS, which these kernels
lack: services use `endpoint_mode: dnsrr` (a name resolves to its tasks' addresses).
Nothing can be pulled here, so images are sent to every node (`docker save | load`).
Everything is removed on the way out: the services and containers inside each engine
first (their cgroups go with them), then the engines and their network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Iterator

from deploy import images, runner
from deploy.config import Settings

ENGINE = images.BaseImage("dockerd", ("docker.io", "iptables", "ca-certificates", "procps"))
CAPS = ("SYS_ADMIN", "NET_ADMIN", "SYS_MODULE", "SYS_PTRACE", "MKNOD", "NET_RAW", "SYS_CHROOT", "SETFCAP", "AUDIT_WRITE",
        "IPC_LOCK", "SYS_NICE")


@dataclasses.dataclass
class Cluster:
    network: str
    nodes: list[str]  # engine containers; the first is the manager

    def docker(self, node: str, *args: str, input: str | bytes | None = None, check: bool = True):
        """`docker ARGS` against one node's engine."""
        return runner.run(["docker", "exec", "-i", node, "docker", *args], input=input, check=check)

    def manager(self, *args: str, check: bool = True):
        return self.docker(self.nodes[0], *args, check=check)

    def send_image(self, tag: str) -> None:
        """Put an image of the host's engine on every node (what a registry would do)."""
        for node in self.nodes:
            runner.run(["sh", "-c", 'docker save "$1" | docker exec -i "$2" docker load -q', "send", tag, node],
                       what=f"sending {tag} to {node}")

    def tasks(self, service: str) -> list[tuple[str, str]]:
        """(node hostname, current state) of each of the service's tasks."""
        out = self.manager("service", "ps", service, "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}").stdout
        return [tuple(line.split(" ", 1)) for line in out.splitlines() if line.strip()]

    def wait_running(self, service: str, replicas: int, seconds: float = 60) -> list[tuple[str, str]]:
        deadline = time.monotonic() + seconds
        while True:
            found = self.tasks(service)
            if len([t for t in found if t[1].startswith("Running")]) >= replicas:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{service}: {replicas} tasks not running after {seconds:.0f}s: {found}")
            time.sleep(0.5)


def _engine_up(node: str) -> bool:
    return runner.run(["docker", "exec", node, "docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], check=False).returncode == 0


@contextlib.contextmanager
def swarm(settings: Settings, size: int = 2) -> Iterator[Cluster]:
    """`size` engines in a Swarm (the first manages it), removed afterwards."""
    images.build_bases(settings, [ENGINE])
    run_id = f"cgswarm{secrets.token_hex(3)}"
    cluster = Cluster(f"{run_id}-net", [f"{run_id}-node{n}" for n in range(1, size + 1)])
    try:
        runner.run(["docker", "network", "create", "--label", f"org.colorgate.swarm={run_id}", cluster.network])
        for n, node in enumerate(cluster.nodes, 1):
            runner.run(["docker", "run", "--detach", "--name", node, "--hostname", f"node{n}", "--network", cluster.network,
                        "--label", f"org.colorgate.swarm={run_id}", *(f"--cap-add={cap}" for cap in CAPS),
                        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                        "-v", "/sys/fs/cgroup:/sys/fs/cgroup", "--tmpfs", "/var/lib/docker:exec", "--tmpfs", "/run",
                        ENGINE.tag(settings.debian_mirror), "dockerd", "--host", "unix:///var/run/docker.sock",
                        "--storage-driver", "overlay2"])
        deadline = time.monotonic() + 60
        while not all(_engine_up(node) for node in cluster.nodes):
            if time.monotonic() > deadline:
                logs = runner.run(["docker", "logs", "--tail", "20", cluster.nodes[0]], check=False)
                raise AssertionError(f"the engines did not start within 60 s: {logs.stdout[-1500:]}{logs.stderr[-1500:]}")
            time.sleep(0.5)
        address = runner.run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                              cluster.nodes[0]]).stdout.strip()
        cluster.manager("swarm", "init", "--advertise-addr", address)
        token = cluster.manager("swarm", "join-token", "-q", "worker").stdout.strip()
        for node in cluster.nodes[1:]:
            cluster.docker(node, "swarm", "join", "--token", token, f"{address}:2377")
        yield cluster
    finally:
        for node in cluster.nodes:  # what runs inside first, so that its cgroups go with it
            runner.run(["docker", "exec", node, "sh", "-c", "docker service rm $(docker service ls -q) 2>/dev/null; "
                        "docker rm -f $(docker ps -aq) 2>/dev/null; true"], check=False)
        runner.run(["docker", "rm", "--force", "--volumes", *cluster.nodes], check=False)
        runner.run(["docker", "network", "rm", cluster.network], check=False)
