"""TLS material on the edge. Until an ACME certificate replaces it (acme.py), the edge
serves a certificate signed by a one-off local CA; its CA certificate is read back
through Docker so clients (gates, tests, curl) can verify the edge for real. What the
edge serves, its status, and its graceful reload onto a new certificate."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import time
from datetime import UTC
from pathlib import Path

from deploy import edge
from deploy.config import Settings
from deploy.errors import ColorgateError
from deploy.target import runner

TLS_DIR = "/etc/colorgate/tls"
LOCAL_CA = f"{TLS_DIR}/local-ca.pem"


def read_local_ca(settings: Settings) -> str:
    """PEM of the local CA that signed the edge's certificate."""
    return edge.in_edge(settings, ["cat", LOCAL_CA], "reading the edge's local CA").stdout


def client_context(ca_pem: str | None = None, ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: the given CA only, or the system CAs when none."""
    if ca_pem is None and ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None, cadata=ca_pem)


CERT = f"{TLS_DIR}/live/fullchain.pem"
KEY = f"{TLS_DIR}/live/privkey.pem"
LOCAL_MARKER = (
    f"{TLS_DIR}/live/.colorgate-local"  # there while the local CA's certificate is served
)
ACME_STATE = f"{TLS_DIR}/acme.json"
RENEWALS = f"{TLS_DIR}/renewals.log"  # the renewer's runs on the server, one JSON line each (compose/certbot/renew-loop.sh)


def key_pair(settings: Settings) -> tuple[str, str, bool]:
    """(certificate chain, private key, made by the local CA) that the edge serves."""
    out = edge.in_edge(
        settings,
        [
            "sh",
            "-c",
            f"cat {CERT}; echo '--colorgate-key--'; cat {KEY}; echo '--colorgate-local--'; "
            f"test ! -f {LOCAL_MARKER} || echo local",
        ],
        "reading the edge's certificate",
    ).stdout
    chain, _, rest = out.partition("--colorgate-key--")
    key, _, local = rest.partition("--colorgate-local--")
    runner.add_secret(key.strip())
    return chain.strip() + "\n", key.strip() + "\n", local.strip() == "local"


def names(cert) -> list[str]:
    """A certificate's subject alternative names (DNS names, then addresses)."""
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *sans.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)),
    ]


def covers(cert_names: list[str], host: str) -> bool:
    """Whether a certificate with these names is valid for `host` as a verifying client
    sees it: an address matches an address; a name matches a name, or a wildcard
    (`*.example.com`) in its first label only."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    host = host.lower().rstrip(".")
    for name in cert_names:
        if address is not None:
            try:
                if ipaddress.ip_address(name) == address:
                    return True
            except ValueError:
                pass
            continue
        name = name.lower().rstrip(".")
        if name == host or (
            name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]
        ):
            return True
    return False


def check_pair(
    chain: str, key: str, host: str, origin: str, setting: str, error=ColorgateError, now=None
) -> None:
    """Refuse (raise `error`) a chain and key that a verifying client would not accept
    for `host`, the value of `setting`, or a server would not load: not PEM, a key of
    another certificate, another name, not valid now."""
    from datetime import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        private = serialization.load_pem_private_key(key.encode(), None)
    except (ValueError, TypeError) as exc:
        raise error(
            f"{origin} is not a PEM certificate chain and an unencrypted PEM key ({str(exc).splitlines()[0]}): "
            "give the chain (the server's certificate first) and its key"
        ) from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise error(
            f"{origin}: the key is not the certificate's: give the key of the first certificate in the chain"
        )
    if not covers(names(leaf), host):
        raise error(
            f"{origin} is for {', '.join(names(leaf)) or 'no name'}, not {host} ({setting}), "
            f"so a client checking it would refuse it: give a certificate for {host}, or set {setting} to one of its names"
        )
    now = now or datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise error(
            f"{origin} is not valid now (from {leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d}): "
            "renew it (`invoke tls.renew` for the edge's) or give a current one"
        )


def served_cert_cmd(settings: Settings) -> list[str]:
    """The certificate chain the edge serves, and the ACME record when there is one."""
    return [
        "docker",
        "exec",
        edge.edge_container(settings),
        "sh",
        "-c",
        f"cat {CERT}; echo '--colorgate-acme--'; cat {ACME_STATE} 2>/dev/null || true; "
        f"echo '--colorgate-local--'; cat {LOCAL_MARKER} 2>/dev/null || true; "
        f"echo '--colorgate-renewal--'; tail -n 1 {RENEWALS} 2>/dev/null || true",
    ]


def describe(
    pem: str, acme_state: str = "", local_marker: str = "", renewal: str = "", now=None
) -> dict:
    """Subject, SANs, issuer, validity and source of the first certificate in `pem`, and
    the renewer's last run on the server (`renewal`, its log's last line)."""
    from datetime import datetime

    from cryptography import x509

    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    now = now or datetime.now(UTC)
    not_after = cert.not_valid_after_utc
    try:
        acme = json.loads(acme_state) if acme_state.strip() else None
    except ValueError:
        acme = None
    try:
        run = json.loads(renewal) if renewal.strip() else None
    except ValueError:
        run = None
    return {
        "subject": cert.subject.rfc4514_string(),
        "sans": names(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": round((not_after - now).total_seconds() / 86400, 1),
        "source": "local CA (made by the edge)"
        if local_marker.strip()
        else ("ACME" if acme else "installed by hand"),
        "acme_directory": acme.get("directory") if acme else None,
        "acme_ca_bundle": bool(acme.get("ca_bundle")) if acme else False,
        "renewed_on_server": (
            f"{run.get('finished', '?')}: {run.get('outcome', '?')}"
            + (
                f" ({run['detail']})"
                if run.get("outcome") == "failed" and run.get("detail")
                else ""
            )
        )
        if run
        else None,
    }


def status(settings: Settings) -> dict:
    out = runner.run(
        served_cert_cmd(settings), env=settings.docker_env(), what="reading the edge's certificate"
    ).stdout
    pem, _, rest = out.partition("--colorgate-acme--")
    acme_state, _, rest = rest.partition("--colorgate-local--")
    local_marker, _, renewal = rest.partition("--colorgate-renewal--")
    return describe(pem, acme_state, local_marker, renewal)


def format_status(data: dict) -> str:
    width = max(len(k) for k in data)
    return "\n".join(
        f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}" for k, v in data.items()
    )


def reload_if_changed(settings: Settings) -> bool:
    """If the deploy hook installed a certificate: `nginx -t`, graceful reload; else nothing."""
    script = f"[ -f {TLS_DIR}/.changed ] || exit 10; nginx -t -q -c {edge.NGINX_CONF} && nginx -s reload -c {edge.NGINX_CONF} && rm -f {TLS_DIR}/.changed"
    proc = runner.run(
        ["docker", "exec", edge.edge_container(settings), "sh", "-c", script],
        env=settings.docker_env(),
        check=False,
    )
    if proc.returncode == 10:
        return False
    if proc.returncode != 0:
        raise ColorgateError(
            f"the edge rejected the new certificate (nginx -t): {proc.stderr.strip().splitlines()[-1:]}; it keeps serving the old one"
        )
    return True


def served_cert(settings: Settings):
    """The certificate (cryptography's x509) the edge presents to a new connection now,
    unverified; None when the edge cannot be reached from here."""
    from cryptography import x509

    ctx = ssl.create_default_context()
    # which one it serves, not whether it is trusted
    ctx.check_hostname, ctx.verify_mode = (
        False,
        ssl.CERT_NONE,
    )
    try:
        with (
            socket.create_connection(
                (settings.edge_address, settings.https_port), timeout=3
            ) as raw,
            ctx.wrap_socket(raw, server_hostname=settings.domain) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def served_serial(settings: Settings) -> str | None:
    """The serial (hex) of the certificate the edge serves now (None: unreachable from here)."""
    cert = served_cert(settings)
    return format(cert.serial_number, "x") if cert else None


def reload_and_wait(settings: Settings, seconds: float = 10) -> dict:
    """reload_if_changed, and the edge's certificate: after a reload, once the edge
    serves it to new connections (nginx's new workers take over a moment after `nginx -s
    reload` returns), so what runs next (the TLS gate) sees it."""
    reloaded = reload_if_changed(settings)
    data = status(settings)
    deadline = time.monotonic() + seconds
    while reloaded:
        served = served_serial(settings)
        if served in (None, data["serial"]):
            break  # serving it (or not reachable from here: the gates check it from where they can)
        if time.monotonic() > deadline:
            raise ColorgateError(
                f"the edge reloaded but still serves its previous certificate after {seconds:.0f} s: "
                "see `invoke logs edge`"
            )
        time.sleep(0.1)
    return {**data, "reloaded": reloaded}
