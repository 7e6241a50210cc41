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


CERT = f"{TLS_DIR}/live/fullchain.pem"
ACME_STATE = f"{TLS_DIR}/acme.json"


def served_cert_cmd(project: str) -> list[str]:
    """The certificate chain the edge serves, and the ACME record when there is one."""
    return ["docker", "exec", proxy.edge_container(project), "sh", "-c",
            f"cat {CERT}; echo '--colorgate-acme--'; cat {ACME_STATE} 2>/dev/null || true; "
            f"echo '--colorgate-local--'; cat {TLS_DIR}/live/.colorgate-local 2>/dev/null || true"]


def describe(pem: str, acme_state: str = "", local_marker: str = "", now=None) -> dict:
    """Subject, SANs, issuer, validity and source of the first certificate in `pem`."""
    import json
    from datetime import datetime, timezone

    from cryptography import x509

    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    now = now or datetime.now(timezone.utc)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        names = []
    not_after = cert.not_valid_after_utc
    try:
        acme = json.loads(acme_state) if acme_state.strip() else None
    except ValueError:
        acme = None
    return {
        "subject": cert.subject.rfc4514_string(),
        "sans": names,
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": round((not_after - now).total_seconds() / 86400, 1),
        "source": "local CA (made by the edge)" if local_marker.strip() else ("ACME" if acme else "installed by hand"),
        "acme_directory": acme.get("directory") if acme else None,
    }


def status(settings: Settings) -> dict:
    out = runner.run(served_cert_cmd(settings.project), env=settings.docker_env(), what="reading the edge's certificate").stdout
    pem, _, rest = out.partition("--colorgate-acme--")
    acme_state, _, local_marker = rest.partition("--colorgate-local--")
    return describe(pem, acme_state, local_marker)


def format_status(data: dict) -> str:
    width = max(len(k) for k in data)
    return "\n".join(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}" for k, v in data.items())
