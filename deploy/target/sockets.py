"""Facts of the target's networks and sockets: the networks each service is attached to,
the ports it publishes, whether something listens on a port of the target's host or
accepts a TCP connection there (through the engine where the host is remote)."""

from __future__ import annotations

import shlex
import socket
from dataclasses import dataclass

from deploy.config import Settings
from deploy.target import connections, ssh
from deploy.target.facts import container, inspect, service_states


@dataclass(frozen=True)
class Network:
    name: str
    internal: bool


def service_networks(settings: Settings, service: str) -> list[Network]:
    """Networks a service's container is attached to, with their `internal` flag."""
    names = sorted(
        (
            (inspect(settings, container(settings, service)).get("NetworkSettings") or {}).get(
                "Networks"
            )
            or {}
        ).keys()
    )
    return [
        Network(
            name,
            bool(
                connections.engine(
                    settings.docker_host, "inspect_network", name, what="inspecting a network"
                ).get("Internal")
            ),
        )
        for name in names
    ]


POSTGRES_PORT = 5432


def published_ports(settings: Settings) -> dict[str, list[str]]:
    """Host ports each service publishes (services that publish none map to [])."""
    return {name: s.ports for name, s in service_states(settings).items()}


def target_host(settings: Settings):
    """testinfra host for the machine the stack runs on: this one for a local engine,
    the SSH host of COLORGATE_DOCKER_HOST otherwise."""
    import testinfra

    if settings.docker_host.startswith("ssh://"):
        # sessions on this command's one connection
        return testinfra.get_host(
            settings.docker_host,
            ssh_extra_args=shlex.join(ssh.tunnel(settings.docker_host).ssh_args()),
        )
    return testinfra.get_host("local://")


def listening_on_port(settings: Settings, port: int) -> list[str]:
    """Sockets on the target host listening on `port`, any address (testinfra)."""
    host = target_host(settings)
    return [
        s
        for s in host.socket.get_listening_sockets()
        if s.rsplit(":", 1)[-1] == str(port) and s.startswith("tcp")
    ]


def tcp_connects(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
