"""TLS material on the edge. Until an ACME certificate replaces it, the edge serves a
certificate signed by a one-off local CA; its CA certificate is read back through
Docker so clients (gates, tests, curl) can verify the edge for real."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import socket
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from deploy import edge, runner, target
from deploy.config import Settings
from deploy.errors import BadInput, ColorgateError, CommandError
from datetime import UTC

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
LOCAL_MARKER = f"{TLS_DIR}/live/.colorgate-local"  # there while the local CA's certificate is served
ACME_STATE = f"{TLS_DIR}/acme.json"
RENEWALS = f"{TLS_DIR}/renewals.log"  # the renewer's runs on the server, one JSON line each (compose/certbot/renew-loop.sh)


def key_pair(settings: Settings) -> tuple[str, str, bool]:
    """(certificate chain, private key, made by the local CA) that the edge serves."""
    out = edge.in_edge(settings, ["sh", "-c", f"cat {CERT}; echo '--colorgate-key--'; cat {KEY}; echo '--colorgate-local--'; "
                                  f"test ! -f {LOCAL_MARKER} || echo local"], "reading the edge's certificate").stdout
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
    return [*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]


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
        if name == host or (name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]):
            return True
    return False


def check_pair(chain: str, key: str, host: str, origin: str, setting: str, error=ColorgateError, now=None) -> None:
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
        raise error(f"{origin} is not a PEM certificate chain and an unencrypted PEM key ({str(exc).splitlines()[0]}): "
                    "give the chain (the server's certificate first) and its key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise error(f"{origin}: the key is not the certificate's: give the key of the first certificate in the chain")
    if not covers(names(leaf), host):
        raise error(f"{origin} is for {', '.join(names(leaf)) or 'no name'}, not {host} ({setting}), "
                    f"so a client checking it would refuse it: give a certificate for {host}, or set {setting} to one of its names")
    now = now or datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise error(f"{origin} is not valid now (from {leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d}): "
                    "renew it (`invoke tls.renew` for the edge's) or give a current one")


def served_cert_cmd(settings: Settings) -> list[str]:
    """The certificate chain the edge serves, and the ACME record when there is one."""
    return ["docker", "exec", edge.edge_container(settings), "sh", "-c",
            f"cat {CERT}; echo '--colorgate-acme--'; cat {ACME_STATE} 2>/dev/null || true; "
            f"echo '--colorgate-local--'; cat {LOCAL_MARKER} 2>/dev/null || true; "
            f"echo '--colorgate-renewal--'; tail -n 1 {RENEWALS} 2>/dev/null || true"]


def describe(pem: str, acme_state: str = "", local_marker: str = "", renewal: str = "", now=None) -> dict:
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
        "source": "local CA (made by the edge)" if local_marker.strip() else ("ACME" if acme else "installed by hand"),
        "acme_directory": acme.get("directory") if acme else None,
        "acme_ca_bundle": bool(acme.get("ca_bundle")) if acme else False,
        "renewed_on_server": (f"{run.get('finished', '?')}: {run.get('outcome', '?')}"
                              + (f" ({run['detail']})" if run.get("outcome") == "failed" and run.get("detail") else "")) if run else None,
    }


def status(settings: Settings) -> dict:
    out = runner.run(served_cert_cmd(settings), env=settings.docker_env(), what="reading the edge's certificate").stdout
    pem, _, rest = out.partition("--colorgate-acme--")
    acme_state, _, rest = rest.partition("--colorgate-local--")
    local_marker, _, renewal = rest.partition("--colorgate-renewal--")
    return describe(pem, acme_state, local_marker, renewal)


def format_status(data: dict) -> str:
    width = max(len(k) for k in data)
    return "\n".join(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}" for k, v in data.items())


# --- ACME (certbot, HTTP-01 through the edge) ---------------------------------------

DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
EMAIL = re.compile(r"^[^@\s]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
CERT_NAME = "colorgate"
ACME_CA_FILE = "/etc/letsencrypt/colorgate-acme-ca.pem"  # trusted for the ACME server's own HTTPS
HOOK = "/usr/local/bin/colorgate-deploy-hook"


def resolve_directory(directory: str | None, staging: bool) -> str:
    """`letsencrypt`, `letsencrypt-staging` or a URL -> the ACME directory URL."""
    if staging and directory not in (None, "letsencrypt-staging"):
        raise BadInput("--staging and --directory both given: use one")
    name = "letsencrypt-staging" if staging else (directory or "letsencrypt")
    if name in DIRECTORIES:
        return DIRECTORIES[name]
    if not re.fullmatch(r"^https://\S+$", name):
        raise BadInput(f"ACME directory {name!r} is neither letsencrypt, letsencrypt-staging nor an https:// URL")
    return name


def on_loopback(directory: str) -> bool:
    """Whether an ACME directory is on the host's own loopback (a test CA)."""
    host = urlsplit(directory).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def certbot_cmd(settings: Settings, *args: str, directory: str, ca_bundle: bool = False) -> list[str]:
    """certbot, one-off, on Colorgate's network; with the host's network only for a
    directory on the host's loopback, which nothing else could reach."""
    extra = ["-e", f"REQUESTS_CA_BUNDLE={ACME_CA_FILE}"] if ca_bundle else []
    service = "certbot-loopback" if on_loopback(directory) else "certbot"
    return target.compose_cmd(settings, "run", "--rm", "--no-deps", "-T", *extra, service, *args)


# certbot runs as the edge's user (its image's USER). Volumes it wrote as root (before
# this version) are handed to that user once, by the only root run left: chown alone.
OWNED_SCRIPT = """me=$(id -u)
[ "$(stat -c %u /etc/letsencrypt)" = "$me" ] && [ -z "$(find /etc/colorgate/tls /var/www/acme ! -user "$me" -print -quit)" ] \
  && echo own || echo root"""


def own_volumes(settings: Settings, env: dict[str, str]) -> None:
    run = ["run", "--rm", "--no-deps", "-T"]
    found = runner.run(target.compose_cmd(settings, *run, "--entrypoint", "sh", "certbot", "-c", OWNED_SCRIPT), env=env,
                       what="checking certbot's files").stdout.split()
    if found[-1:] != ["own"]:
        runner.run(target.compose_cmd(settings, *run, "--user", "0", "--cap-add", "CHOWN", "--entrypoint", "chown", "certbot",
                                     "-R", "10003:10003", "/etc/letsencrypt", "/etc/colorgate/tls", "/var/www/acme"),
                   env=env, what="handing certbot's files to the edge's user")
        runner.say("   certbot's files, made as root by an earlier version, now belong to the edge's user (certbot runs as it)")


def certonly_args(domain: str, email: str, directory: str) -> list[str]:
    return ["certonly", "--webroot", "--webroot-path", "/var/www/acme", "--domain", domain, "--email", email,
            "--agree-tos", "--non-interactive", "--no-eff-email", "--server", directory, "--cert-name", CERT_NAME,
            "--keep-until-expiring", "--deploy-hook", HOOK]


def renew_args() -> list[str]:
    return ["renew", "--cert-name", CERT_NAME, "--non-interactive", "--no-random-sleep-on-renew", "--deploy-hook", HOOK]


def explain_certbot(exc: CommandError, directory: str, domain: str) -> ColorgateError:
    """certbot's failure -> one line naming the cause and the fix."""
    text = exc.stdout + exc.stderr
    if re.search(r"Connection refused|Max retries exceeded|Name or service not known|NewConnectionError|Failed to establish", text):
        return ColorgateError(f"the ACME server {directory} is unreachable: check the directory URL and this host's network")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ColorgateError(f"the ACME server {directory} has a certificate this host does not trust: pass its CA with --ca-bundle")
    if "Some challenges have failed" in text or "unauthorized" in text.lower() or "Connection refused" in text:
        detail = next((line.strip() for line in text.splitlines() if "Detail:" in line), "")
        return ColorgateError(
            f"the CA could not fetch the HTTP-01 challenge for {domain} ({detail.removeprefix('Detail:').strip() or 'see certbot output'}): "
            f"port 80 of {domain} must reach this edge"
        )
    if "Another instance of Certbot is already running" in text:
        return ColorgateError("the renewer on the server is renewing this certificate right now: try again in a minute")
    if "invalid" in text.lower() and "contact" in text.lower():
        return ColorgateError("the ACME server refused the email address: give a valid --email")
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "no output")
    return ColorgateError(f"certbot failed: {runner.redact(last.strip())}")


def reload_if_changed(settings: Settings) -> bool:
    """If the deploy hook installed a certificate: `nginx -t`, graceful reload; else nothing."""
    script = f"[ -f {TLS_DIR}/.changed ] || exit 10; nginx -t -q -c {edge.NGINX_CONF} && nginx -s reload -c {edge.NGINX_CONF} && rm -f {TLS_DIR}/.changed"
    proc = runner.run(["docker", "exec", edge.edge_container(settings), "sh", "-c", script], env=settings.docker_env(), check=False)
    if proc.returncode == 10:
        return False
    if proc.returncode != 0:
        raise ColorgateError(f"the edge rejected the new certificate (nginx -t): {proc.stderr.strip().splitlines()[-1:]}; it keeps serving the old one")
    return True


def served_serial(settings: Settings) -> str | None:
    """The serial (hex) of the certificate the edge presents to a new connection now;
    None when the edge cannot be reached from here."""
    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # which one it serves, not whether it is trusted
    try:
        with socket.create_connection((settings.edge_address, settings.https_port), timeout=3) as raw, \
                ctx.wrap_socket(raw, server_hostname=settings.domain) as conn:
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return format(x509.load_der_x509_certificate(der).serial_number, "x") if der else None


def _reload(settings: Settings, seconds: float = 10) -> dict:
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
            raise ColorgateError(f"the edge reloaded but still serves its previous certificate after {seconds:.0f} s: "
                                 "see `invoke logs edge`")
        time.sleep(0.1)
    return {**data, "reloaded": reloaded}


def init(settings: Settings, email: str, domain: str | None = None, directory: str | None = None,
         staging: bool = False, ca_bundle: Path | None = None) -> dict:
    """Obtain a certificate for the edge's domain over HTTP-01 and move the edge onto it
    with a graceful reload. Until then, and whenever this fails, the current
    certificate keeps serving."""
    domain = domain or settings.domain
    if domain != settings.domain:
        raise BadInput(f"--domain {domain} is not COLORGATE_DOMAIN ({settings.domain}): set COLORGATE_DOMAIN={domain} first")
    if domain == "localhost" or "." not in domain:
        raise BadInput(f"an ACME CA cannot issue for {domain!r}: set COLORGATE_DOMAIN to a public host name")
    if not EMAIL.fullmatch(email or ""):
        raise BadInput(f"invalid email {email!r}: give an address the CA can send expiry notices to")
    url = resolve_directory(directory, staging)
    env = target.compose_env(settings, {})
    own_volumes(settings, env)
    if ca_bundle:
        if not Path(ca_bundle).is_file():
            raise BadInput(f"--ca-bundle {ca_bundle} does not exist")
        runner.run(target.compose_cmd(settings, "run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "certbot", "-c",
                                     f"cat > {ACME_CA_FILE}"), input=Path(ca_bundle).read_text(), env=env, what="installing the ACME CA bundle")
    try:
        runner.run(certbot_cmd(settings, *certonly_args(domain, email, url), directory=url, ca_bundle=bool(ca_bundle)), env=env,
                   timeout=600, what="certbot certonly")
    except CommandError as exc:
        raise explain_certbot(exc, url, domain) from None
    record = json.dumps({"directory": url, "email": email, "domain": domain, "ca_bundle": bool(ca_bundle)})
    runner.run(["docker", "exec", "-i", edge.edge_container(settings), "sh", "-c", f"cat > {ACME_STATE}"],
               input=record, env=settings.docker_env(), what="recording the ACME directory")
    reloaded = _reload(settings)
    if target.of(settings).renews_on_server:  # else tls.renew renews it (scheduled where it runs)
        start_renewer(settings, url)
    return reloaded


def start_renewer(settings: Settings, directory: str) -> None:
    """The renewer on the server (compose/certbot/renew-loop.sh), for the ACME
    `directory`: started, or made again when the settings changed (compose's `up`), and
    its other variant (loopback or not) removed."""
    name, other = ("renewer-loopback", "renewer") if on_loopback(directory) else ("renewer", "renewer-loopback")
    env = target.compose_env(settings, {})
    runner.run(target.compose_cmd(settings, *target.ALL_PROFILES, "rm", "--stop", "--force", other), env=env, check=False)
    with runner.step(f"starting the certificate's renewal on the server (every {settings.renew_every} s)"):
        runner.run(target.compose_cmd(settings, *target.ALL_PROFILES, "up", "--detach", "--no-deps", "--no-build", name), env=env,
                   what="starting the renewer")


def ensure_renewer(settings: Settings) -> None:
    """`up`: the renewer runs wherever an ACME certificate is in use."""
    directory = status(settings)["acme_directory"]
    if directory:
        start_renewer(settings, directory)


def renew(settings: Settings) -> dict:
    """Renew when due (certbot decides; a local certificate within 30 days of its end is
    made again by the edge), reload only when a certificate changed."""
    state = status(settings)
    if state["source"].startswith("local"):
        runner.run(["docker", "exec", edge.edge_container(settings), "/usr/local/bin/colorgate-edge", "--renew-local"],
                   env=settings.docker_env(), what="renewing the local certificate")
        return _reload(settings)
    if not state["acme_directory"]:
        raise ColorgateError("the edge serves a certificate installed by hand: renew it by hand, or run `invoke tls.init`")
    env = target.compose_env(settings, {})
    own_volumes(settings, env)
    try:
        runner.run(certbot_cmd(settings, *renew_args(), directory=state["acme_directory"], ca_bundle=state["acme_ca_bundle"]), env=env,
                   timeout=600, what="certbot renew")
    except CommandError as exc:
        raise explain_certbot(exc, state["acme_directory"], settings.domain) from None
    return _reload(settings)


def cron_line(settings: Settings, python: str) -> str:
    """A daily renewal, at a time derived from the project name (spread across hosts)."""
    minute = int(hashlib.sha256(settings.project.encode()).hexdigest(), 16) % 60
    host = f"COLORGATE_DOCKER_HOST={shlex.quote(settings.docker_host)} " if settings.docker_host else ""
    return (f"{minute} 3 * * * root cd {shlex.quote(str(settings.root))} && COLORGATE_PROFILE={settings.profile} {host}"
            f"{shlex.quote(python)} -m deploy.cli tls.renew >> /var/log/colorgate-{settings.project}-renew.log 2>&1\n")


def schedule(settings: Settings, cron_dir: Path = Path("/etc/cron.d"), python: str = sys.executable) -> str:
    """Install the daily renewal as a cron file; unchanged when it is already there."""
    target = cron_dir / f"colorgate-{settings.project}-renew"
    content = "# Managed by Colorgate (`invoke tls.schedule`): daily certificate renewal.\n" + cron_line(settings, python)
    if target.is_file() and target.read_text() == content:
        return f"already installed: {target}"
    if not cron_dir.is_dir():
        raise ColorgateError(f"{cron_dir} does not exist: install cron (`apt-get install cron`) and retry")
    tmp = target.with_name("." + target.name + ".tmp")
    tmp.write_text(content)
    tmp.chmod(0o644)
    os.replace(tmp, target)
    if settings.docker_host:
        return (f"installed: {target} (it runs here and renews {settings.docker_host} over SSH with root's key: "
                "keep this machine running, or schedule `invoke tls.renew --host ...` in CI instead)")
    return f"installed: {target}"
