"""Certificates from an ACME CA (Let's Encrypt, or any ACME directory): certbot, one-off
on Colorgate's network, answering HTTP-01 through the edge (`invoke tls.init`); their
renewal, by the renewer on the server (compose/certbot/renew-loop.sh) or `invoke
tls.renew` (also for the local CA's certificate), scheduled by cron where a Swarm's edge
has no renewer. What the edge serves, and its reload onto a new certificate: tls.py."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

from deploy import edge
from deploy.config import Settings
from deploy.edge import tls
from deploy.errors import BadInput, ColorgateError, CommandError
from deploy.target import compose, runner, targets

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
        raise BadInput(
            f"ACME directory {name!r} is neither letsencrypt, letsencrypt-staging nor an https:// URL"
        )
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


def certbot_cmd(
    settings: Settings, *args: str, directory: str, ca_bundle: bool = False
) -> list[str]:
    """certbot, one-off, on Colorgate's network; with the host's network only for a
    directory on the host's loopback, which nothing else could reach."""
    extra = ["-e", f"REQUESTS_CA_BUNDLE={ACME_CA_FILE}"] if ca_bundle else []
    service = "certbot-loopback" if on_loopback(directory) else "certbot"
    return compose.compose_cmd(settings, "run", "--rm", "--no-deps", "-T", *extra, service, *args)


# certbot runs as the edge's user (its image's USER). Volumes it wrote as root (before
# this version) are handed to that user once, by the only root run left: chown alone.
OWNED_SCRIPT = """me=$(id -u)
[ "$(stat -c %u /etc/letsencrypt)" = "$me" ] && [ -z "$(find /etc/colorgate/tls /var/www/acme ! -user "$me" -print -quit)" ] \
  && echo own || echo root"""


def own_volumes(settings: Settings, env: dict[str, str]) -> None:
    run = ["run", "--rm", "--no-deps", "-T"]
    found = runner.run(
        compose.compose_cmd(settings, *run, "--entrypoint", "sh", "certbot", "-c", OWNED_SCRIPT),
        env=env,
        what="checking certbot's files",
    ).stdout.split()
    if found[-1:] != ["own"]:
        runner.run(
            compose.compose_cmd(
                settings,
                *run,
                "--user",
                "0",
                "--cap-add",
                "CHOWN",
                "--entrypoint",
                "chown",
                "certbot",
                "-R",
                "10003:10003",
                "/etc/letsencrypt",
                "/etc/colorgate/tls",
                "/var/www/acme",
            ),
            env=env,
            what="handing certbot's files to the edge's user",
        )
        runner.say(
            "   certbot's files, made as root by an earlier version, now belong to the edge's user (certbot runs as it)"
        )


def certonly_args(domain: str, email: str, directory: str) -> list[str]:
    return [
        "certonly",
        "--webroot",
        "--webroot-path",
        "/var/www/acme",
        "--domain",
        domain,
        "--email",
        email,
        "--agree-tos",
        "--non-interactive",
        "--no-eff-email",
        "--server",
        directory,
        "--cert-name",
        CERT_NAME,
        "--keep-until-expiring",
        "--deploy-hook",
        HOOK,
    ]


def renew_args() -> list[str]:
    return [
        "renew",
        "--cert-name",
        CERT_NAME,
        "--non-interactive",
        "--no-random-sleep-on-renew",
        "--deploy-hook",
        HOOK,
    ]


def explain_certbot(exc: CommandError, directory: str, domain: str) -> ColorgateError:
    """certbot's failure -> one line naming the cause and the fix."""
    text = exc.stdout + exc.stderr
    if re.search(
        r"Connection refused|Max retries exceeded|Name or service not known|NewConnectionError|Failed to establish",
        text,
    ):
        return ColorgateError(
            f"the ACME server {directory} is unreachable: check the directory URL and this host's network"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ColorgateError(
            f"the ACME server {directory} has a certificate this host does not trust: pass its CA with --ca-bundle"
        )
    if (
        "Some challenges have failed" in text
        or "unauthorized" in text.lower()
        or "Connection refused" in text
    ):
        detail = next((line.strip() for line in text.splitlines() if "Detail:" in line), "")
        return ColorgateError(
            f"the CA could not fetch the HTTP-01 challenge for {domain} ({detail.removeprefix('Detail:').strip() or 'see certbot output'}): "
            f"port 80 of {domain} must reach this edge"
        )
    if "Another instance of Certbot is already running" in text:
        return ColorgateError(
            "the renewer on the server is renewing this certificate right now: try again in a minute"
        )
    if "invalid" in text.lower() and "contact" in text.lower():
        return ColorgateError("the ACME server refused the email address: give a valid --email")
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "no output")
    return ColorgateError(f"certbot failed: {runner.redact(last.strip())}")


def init(
    settings: Settings,
    email: str,
    domain: str | None = None,
    directory: str | None = None,
    staging: bool = False,
    ca_bundle: Path | None = None,
) -> dict:
    """Obtain a certificate for the edge's domain over HTTP-01 and move the edge onto it
    with a graceful reload. Until then, and whenever this fails, the current
    certificate keeps serving."""
    domain = _check_init(settings, email, domain)
    url = resolve_directory(directory, staging)
    env = compose.compose_env(settings, {})
    own_volumes(settings, env)
    if ca_bundle:
        _install_ca_bundle(settings, env, Path(ca_bundle))
    try:
        runner.run(
            certbot_cmd(
                settings,
                *certonly_args(domain, email, url),
                directory=url,
                ca_bundle=bool(ca_bundle),
            ),
            env=env,
            timeout=600,
            what="certbot certonly",
        )
    except CommandError as exc:
        raise explain_certbot(exc, url, domain) from None
    record = json.dumps(
        {"directory": url, "email": email, "domain": domain, "ca_bundle": bool(ca_bundle)}
    )
    runner.run(
        [
            "docker",
            "exec",
            "-i",
            edge.edge_container(settings),
            "sh",
            "-c",
            f"cat > {tls.ACME_STATE}",
        ],
        input=record,
        env=settings.docker_env(),
        what="recording the ACME directory",
    )
    reloaded = tls.reload_and_wait(settings)
    if targets.of(settings).renews_on_server:  # else tls.renew renews it (scheduled where it runs)
        start_renewer(settings, url)
    return reloaded


def _check_init(settings: Settings, email: str, domain: str | None) -> str:
    """The domain a certificate is asked for: COLORGATE_DOMAIN, a public name; and an
    address the CA can write to."""
    domain = domain or settings.domain
    if domain != settings.domain:
        raise BadInput(
            f"--domain {domain} is not COLORGATE_DOMAIN ({settings.domain}): set COLORGATE_DOMAIN={domain} first"
        )
    if domain == "localhost" or "." not in domain:
        raise BadInput(
            f"an ACME CA cannot issue for {domain!r}: set COLORGATE_DOMAIN to a public host name"
        )
    if not EMAIL.fullmatch(email or ""):
        raise BadInput(
            f"invalid email {email!r}: give an address the CA can send expiry notices to"
        )
    return domain


def _install_ca_bundle(settings: Settings, env: dict[str, str], ca_bundle: Path) -> None:
    """The CA bundle certbot trusts for a private ACME directory, into its volume."""
    if not ca_bundle.is_file():
        raise BadInput(f"--ca-bundle {ca_bundle} does not exist")
    runner.run(
        compose.compose_cmd(
            settings, "run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "certbot", "-c"
        )
        + [f"cat > {ACME_CA_FILE}"],
        input=ca_bundle.read_text(),
        env=env,
        what="installing the ACME CA bundle",
    )


def start_renewer(settings: Settings, directory: str) -> None:
    """The renewer on the server (compose/certbot/renew-loop.sh), for the ACME
    `directory`: started, or made again when the settings changed (compose's `up`), and
    its other variant (loopback or not) removed."""
    name, other = (
        ("renewer-loopback", "renewer")
        if on_loopback(directory)
        else ("renewer", "renewer-loopback")
    )
    env = compose.compose_env(settings, {})
    runner.run(
        compose.compose_cmd(settings, *compose.ALL_PROFILES, "rm", "--stop", "--force", other),
        env=env,
        check=False,
    )
    with runner.step(
        f"starting the certificate's renewal on the server (every {settings.renew_every} s)"
    ):
        runner.run(
            compose.compose_cmd(
                settings, *compose.ALL_PROFILES, "up", "--detach", "--no-deps", "--no-build", name
            ),
            env=env,
            what="starting the renewer",
        )


def ensure_renewer(settings: Settings) -> None:
    """`up`: the renewer runs wherever an ACME certificate is in use."""
    directory = tls.status(settings)["acme_directory"]
    if directory:
        start_renewer(settings, directory)


def renew(settings: Settings) -> dict:
    """Renew when due (certbot decides; a local certificate within 30 days of its end is
    made again by the edge), reload only when a certificate changed."""
    state = tls.status(settings)
    if state["source"].startswith("local"):
        runner.run(
            [
                "docker",
                "exec",
                edge.edge_container(settings),
                "/usr/local/bin/colorgate-edge",
                "--renew-local",
            ],
            env=settings.docker_env(),
            what="renewing the local certificate",
        )
        return tls.reload_and_wait(settings)
    if not state["acme_directory"]:
        raise ColorgateError(
            "the edge serves a certificate installed by hand: renew it by hand, or run `invoke tls.init`"
        )
    env = compose.compose_env(settings, {})
    own_volumes(settings, env)
    try:
        runner.run(
            certbot_cmd(
                settings,
                *renew_args(),
                directory=state["acme_directory"],
                ca_bundle=state["acme_ca_bundle"],
            ),
            env=env,
            timeout=600,
            what="certbot renew",
        )
    except CommandError as exc:
        raise explain_certbot(exc, state["acme_directory"], settings.domain) from None
    return tls.reload_and_wait(settings)


def cron_line(settings: Settings, python: str) -> str:
    """A daily renewal, at a time derived from the project name (spread across hosts)."""
    minute = int(hashlib.sha256(settings.project.encode()).hexdigest(), 16) % 60
    host = (
        f"COLORGATE_DOCKER_HOST={shlex.quote(settings.docker_host)} "
        if settings.docker_host
        else ""
    )
    return (
        f"{minute} 3 * * * root cd {shlex.quote(str(settings.root))} && COLORGATE_PROFILE={settings.profile} {host}"
        f"{shlex.quote(python)} -m deploy.cli tls.renew >> /var/log/colorgate-{settings.project}-renew.log 2>&1\n"
    )


def schedule(
    settings: Settings, cron_dir: Path = Path("/etc/cron.d"), python: str = sys.executable
) -> str:
    """Install the daily renewal as a cron file; unchanged when it is already there."""
    target = cron_dir / f"colorgate-{settings.project}-renew"
    content = (
        "# Managed by Colorgate (`invoke tls.schedule`): daily certificate renewal.\n"
        + cron_line(settings, python)
    )
    if target.is_file() and target.read_text() == content:
        return f"already installed: {target}"
    if not cron_dir.is_dir():
        raise ColorgateError(
            f"{cron_dir} does not exist: install cron (`apt-get install cron`) and retry"
        )
    tmp = target.with_name("." + target.name + ".tmp")
    tmp.write_text(content)
    tmp.chmod(0o644)
    os.replace(tmp, target)
    if settings.docker_host:
        return (
            f"installed: {target} (it runs here and renews {settings.docker_host} over SSH with root's key: "
            "keep this machine running, or schedule `invoke tls.renew --host ...` in CI instead)"
        )
    return f"installed: {target}"
