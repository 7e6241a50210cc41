"""Facts the gates check, read from the target. Steps in steps/ stay thin and call
these; each returns plain data so a failed gate can say what it saw."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import httpx

from deploy import stack, tls
from deploy.config import Settings


def edge_client(settings: Settings, ca_pem: str | None = None) -> httpx.Client:
    """HTTPS client for the public edge, verifying its certificate against `ca_pem`
    (the edge's local CA by default) and the configured domain."""
    ca_pem = ca_pem if ca_pem is not None else tls.read_local_ca(settings)
    return httpx.Client(
        base_url=settings.https_url,
        verify=tls.client_context(ca_pem),
        timeout=10,
        follow_redirects=False,
        trust_env=False,
    )


@dataclass(frozen=True)
class Network:
    name: str
    internal: bool


def service_networks(settings: Settings, service: str) -> list[Network]:
    """Networks a service's container is attached to, with their `internal` flag."""
    docker = stack.engine(settings)
    container = docker.container.inspect(f"{settings.project}-{service}-1")
    names = sorted((container.network_settings.networks or {}).keys())
    return [Network(name, bool(docker.network.inspect(name).internal)) for name in names]


def published_ports(settings: Settings) -> dict[str, list[str]]:
    """Host ports each service publishes (services that publish none map to [])."""
    return {name: s.ports for name, s in stack.service_states(settings).items()}


def tcp_connects(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
