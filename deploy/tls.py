"""TLS material on the edge. Until an ACME certificate replaces it, the edge serves a
certificate signed by a one-off local CA; its CA certificate is read back through
Docker so clients (gates, tests, curl) can verify the edge for real."""

from __future__ import annotations

import ssl
from pathlib import Path

from deploy import proxy, runner
from deploy.config import Settings

TLS_DIR = "/etc/colorgate/tls"
LOCAL_CA = f"{TLS_DIR}/local-ca.pem"


def local_ca_cmd(project: str) -> list[str]:
    return ["docker", "exec", proxy.edge_container(project), "cat", LOCAL_CA]


def read_local_ca(settings: Settings) -> str:
    """PEM of the local CA that signed the edge's certificate."""
    return runner.run(local_ca_cmd(settings.project), env=settings.docker_env(), what="reading the edge's local CA").stdout


def client_context(ca_pem: str | None = None, ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: the given CA only, or the system CAs when none."""
    if ca_pem is None and ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None, cadata=ca_pem)
