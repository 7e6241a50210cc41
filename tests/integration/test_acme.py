"""Certificates from a real ACME server: Debian's pebble (Let's Encrypt's test CA)
with pebble-challtestsrv as its DNS (every name -> 127.0.0.1), on loopback ports of
their own; certbot in its container answering HTTP-01 through the edge."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest
import tenacity
from cryptography import x509

from deploy import bases, config, edge, errors, images, profiles, stack
from deploy.edge import acme, tls
from deploy.release import gates
from deploy.target import facts, runner
from tests.certs import make_ca, make_leaf

from .conftest import free_port, invoke, isolated_env, pebble_server, running_stack

DOMAIN = "colorgate-test.example"
VALIDITY_DAYS = (
    20  # under certbot's 30-day renewal window (so renew renews), over the gate's 14-day floor
)


@pytest.fixture(scope="module")
def env():
    # the edge looks for what the renewer on the server renewed every second (60 by default)
    return {**isolated_env("acme"), "COLORGATE_DOMAIN": DOMAIN, "COLORGATE_RENEWAL_CHECK": "1"}


@pytest.fixture(scope="module")
def pebble(tmp_path_factory, env):
    with pebble_server(
        tmp_path_factory.mktemp("pebble"), int(env["COLORGATE_HTTP_PORT"]), VALIDITY_DAYS
    ) as found:
        yield found


@pytest.fixture(scope="module")
def settings(request, env, pebble):
    s = profiles.load("development", environ={**os.environ, **env})
    with running_stack(request, s):
        yield s


def tls_gates(env, ca_file) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "features/", "-q", "-p", "no:cacheprovider", "-m", "tls"],
        env={**os.environ, **env, "COLORGATE_TLS_CA": str(ca_file)},
        capture_output=True,
        text=True,
        cwd=config.project_root(),
    )


def test_bad_email_is_refused_before_anything_runs(settings, pebble):
    with pytest.raises(Exception, match=r"^invalid email 'not-an-email': give an address"):
        acme.init(
            settings, "not-an-email", directory=pebble["directory"], ca_bundle=pebble["endpoint_ca"]
        )


def test_a_domain_other_than_the_configured_one_is_refused(settings, env):
    proc = invoke("tls.init", "--email", f"ops@{DOMAIN}", "--domain", "bad..example", env=env)
    assert proc.returncode == errors.BAD_INPUT
    assert proc.stderr.strip().splitlines()[-1] == (
        f"colorgate: --domain bad..example is not COLORGATE_DOMAIN ({DOMAIN}): set COLORGATE_DOMAIN=bad..example first"
    )


def test_unreachable_acme_server_leaves_the_certificate_in_place(settings, pebble, env):
    before = tls.status(settings)
    proc = invoke(
        "tls.init",
        "--email",
        f"ops@{DOMAIN}",
        "--directory",
        f"https://localhost:{free_port()}/dir",
        "--ca-bundle",
        str(pebble["endpoint_ca"]),
        env=env,
    )
    assert (
        proc.returncode == errors.FAILED
        and "is unreachable: check the directory URL" in proc.stderr.strip().splitlines()[-1]
    )
    assert tls.status(settings) == before


def test_a_failing_challenge_is_explained_and_https_keeps_serving(settings, pebble, env):
    # the CA resolves the domain to an address where no edge listens
    httpx.post(
        f"{pebble['challtestsrv']}/add-a", json={"host": DOMAIN + ".", "addresses": ["127.0.0.2"]}
    ).raise_for_status()
    try:
        proc = invoke(
            "tls.init",
            "--email",
            f"ops@{DOMAIN}",
            "--directory",
            pebble["directory"],
            "--ca-bundle",
            str(pebble["endpoint_ca"]),
            env=env,
        )
    finally:
        httpx.post(
            f"{pebble['challtestsrv']}/clear-a", json={"host": DOMAIN + "."}
        ).raise_for_status()
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        proc.returncode == errors.FAILED
        and "could not fetch the HTTP-01 challenge" in last
        and "port 80 of" in last
    ), proc.stderr[-2000:]
    with gates.edge_client(settings) as c:
        assert c.get("/api/health").status_code == 200
    assert tls.status(settings)["source"] == "local CA (made by the edge)"


def test_a_local_certificate_near_its_end_is_made_again_by_tls_renew(settings, env):
    """(Before tls.init: the edge serves its local certificate.) The daily tls.renew
    renews it too, when fewer than 30 days are left, without a restart."""

    def served_days() -> float:
        pem = ssl.get_server_certificate(("127.0.0.1", settings.https_port))
        not_after = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
        return (not_after - datetime.now(UTC)).total_seconds() / 86400

    not_due = invoke("tls.renew", env=env)
    assert not_due.returncode == 0 and not_due.stdout.startswith("not due yet"), not_due.stderr
    ca, ca_key = make_ca("Colorgate local CA (short-lived)")
    cert, key = make_leaf(ca, ca_key, DOMAIN, days=10)
    container = f"{settings.project}-edge-1"
    runner.run(
        [
            "docker",
            "exec",
            "-i",
            container,
            "sh",
            "-c",
            "cat > /etc/colorgate/tls/live/fullchain.pem",
        ],
        input=cert,
    )
    runner.run(
        [
            "docker",
            "exec",
            "-i",
            container,
            "sh",
            "-c",
            "cat > /etc/colorgate/tls/live/privkey.pem",
        ],
        input=key,
    )
    runner.run(
        ["docker", "exec", container, "nginx", "-s", "reload", "-c", "/etc/colorgate/nginx.conf"]
    )
    for _ in range(50):
        if served_days() < 11:
            break
        time.sleep(0.1)
    assert served_days() < 11
    renewed = invoke("tls.renew", env=env)
    assert renewed.returncode == 0 and renewed.stdout.startswith(
        "renewed; the edge now serves it"
    ), renewed.stdout + renewed.stderr
    for _ in range(50):
        if served_days() > 364:
            break
        time.sleep(0.1)
    assert served_days() > 364
    assert (
        json.loads(invoke("tls.status", "--json", env=env).stdout)["source"]
        == "local CA (made by the edge)"
    )


def served_now(settings) -> str:
    """Which certificate the edge presents to a new connection: what a failed
    verification saw (its subject, issuer and serial)."""
    cert = tls.served_cert(settings)
    if cert is None:
        return "nothing (the edge did not answer)"
    return f"{cert.subject.rfc4514_string()} from {cert.issuer.rfc4514_string()}, serial {cert.serial_number:x}"


def test_obtain_renew_and_gate_with_zero_failed_requests(settings, pebble, env):
    both = tls.read_local_ca(settings) + pebble["root"].read_text()
    failures, retried, done, stop = [], [], [0], threading.Event()
    began, steps = time.monotonic(), []  # the test's own steps, to place a failure among them

    def step(what: str) -> None:
        steps.append(f"{time.monotonic() - began:.2f}s {what}")

    def load():
        with gates.edge_client(settings, both) as c:
            while not stop.is_set():
                try:
                    try:
                        r = c.get("/api/version")
                    except httpx.RemoteProtocolError as exc:
                        # nginx's old workers close idle keep-alive connections at a reload;
                        # HTTP lets a client retry an idempotent request once on a new
                        # connection (browsers do). Counted, and it must then succeed.
                        if "without sending a response" not in str(exc):
                            raise
                        retried.append(repr(exc))
                        with gates.edge_client(settings, both) as fresh:
                            r = fresh.get("/api/version")
                    if r.status_code != 200:
                        failures.append(r.status_code)
                except httpx.HTTPError as exc:
                    seen = served_now(settings) if "CERTIFICATE_VERIFY_FAILED" in str(exc) else ""
                    failures.append(f"{time.monotonic() - began:.2f}s {exc!r} {seen}")
                done[0] += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        step(f"tls.init (serving {served_now(settings)})")
        data = acme.init(
            settings,
            f"ops@{DOMAIN}",
            directory=pebble["directory"],
            ca_bundle=pebble["endpoint_ca"],
        )
        step(f"tls.init returned (serving {served_now(settings)})")
        first = tls.status(settings)
        renewed = acme.renew(settings)
        step(f"tls.renew returned (serving {served_now(settings)})")
    finally:
        stop.set()
        t.join()
    assert failures == [] and done[0] > 50, (failures[:5], len(failures), done[0], steps)
    assert len(retried) <= 3 * 2, retried  # at most a couple per reload

    assert (
        data["reloaded"] is True
        and data["source"] == "ACME"
        and data["acme_directory"] == pebble["directory"]
    )
    assert data["sans"] == [DOMAIN] and "Pebble" in data["issuer"]
    assert VALIDITY_DAYS - 1 < data["days_left"] <= VALIDITY_DAYS
    # due within certbot's window, so renew renewed it and the edge moved onto the new one
    assert renewed["reloaded"] is True and renewed["serial"] != first["serial"]
    # still inside the window: renewed again, never a no-op reload
    assert acme.renew(settings)["reloaded"] is True
    handshake = gates.tls_handshake(
        settings.edge_address, settings.https_port, DOMAIN, pebble["root"].read_text()
    )
    assert handshake.ok, handshake.error

    # the TLS gate passes against pebble's root and fails against an unrelated CA
    assert tls_gates(env, pebble["root"]).returncode == 0
    unrelated, _ = make_ca("Unrelated CA")
    other = pebble["dir"] / "unrelated.pem"
    other.write_text(unrelated)
    proc = tls_gates(env, other)
    assert proc.returncode == 1 and "failed verification" in proc.stdout


def test_the_server_renews_by_itself_and_the_edge_takes_up_the_new_certificate(
    settings, pebble, env
):
    """With no operator's machine: the renewer tls.init started on the server renews a
    certificate inside certbot's 30-day window (here 2 s after it starts; 12 h by default),
    the edge checks it and reloads onto it by itself, and tls.status and the history say so."""
    before = tls.status(settings)
    # pebble is on this host's loopback
    assert facts.service_states(settings)["renewer-loopback"].state == "running"
    acme.start_renewer(dataclasses.replace(settings, renew_every=2), pebble["directory"])
    try:
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(90), wait=tenacity.wait_fixed(0.5), reraise=True
        ):
            with attempt:
                now = tls.status(settings)
                assert (now["renewed_on_server"] or "").endswith(": renewed") and now[
                    "serial"
                ] != before["serial"], now
                # served: the edge reloaded by itself
                assert tls.served_serial(settings) == now["serial"]
    finally:
        # its default interval again: no renewal during the next tests
        acme.start_renewer(settings, pebble["directory"])
    renewals = [r for r in edge.read_history(settings) if r["action"] == "tls.renew"]
    assert (
        renewals
        and {r["outcome"] for r in renewals} == {"renewed"}
        and renewals[-1]["operator"] == "the renewer on the server"
    )
    shown = invoke("history", env=env)
    assert (
        shown.returncode == 0
        and "tls.renew" in shown.stdout
        and "the renewer on the server" in shown.stdout
    ), shown.stdout
    handshake = gates.tls_handshake(
        settings.edge_address, settings.https_port, DOMAIN, pebble["root"].read_text()
    )
    assert handshake.ok, handshake.error


def test_status_and_schedule(settings, tmp_path, env):
    proc = invoke("tls.status", "--json", env=env)
    assert json.loads(proc.stdout)["source"] == "ACME"
    first = acme.schedule(settings, cron_dir=tmp_path, python="/opt/venv/bin/python")
    again = acme.schedule(settings, cron_dir=tmp_path, python="/opt/venv/bin/python")
    assert first.startswith("installed: ") and again.startswith("already installed: ")
    line = (tmp_path / f"colorgate-{settings.project}-renew").read_text().splitlines()[-1]
    assert (
        line.split()[1:5] == ["3", "*", "*", "*"]
        and "/opt/venv/bin/python -m deploy.cli tls.renew" in line
    )


def test_an_app_without_a_database_gets_its_certificate_too(settings, pebble, env, request):
    """(Last in this module: the static site takes the default stack's ports, which the
    test CA validates on.) Another app than the default one gets and serves an ACME
    certificate the same way, and its TLS gates pass against the CA's root."""
    stack.down(settings)
    site_env = {
        **env,
        "COLORGATE_PROJECT": f"{env['COLORGATE_PROJECT']}site",
        "COLORGATE_IMAGE_PREFIX": f"{env['COLORGATE_PROJECT']}site/",
        "COLORGATE_APP": str(config.project_root() / "examples" / "static-site"),
    }
    site = profiles.load("development", environ={**os.environ, **site_env})
    bases.build_bases(site, bases.missing_bases(site))
    with running_stack(request, site):
        # as an earlier version, which ran certbot as root, left its volumes
        stack.build(site, ["certbot"], {})
        volumes = [
            "-v",
            f"{site.project}_letsencrypt:/etc/letsencrypt",
            "-v",
            f"{site.project}_tls:/etc/colorgate/tls",
        ]
        as_root = [
            "docker",
            "run",
            "--rm",
            "--user",
            "0",
            *volumes,
            "--entrypoint",
            "sh",
            images.app_tag(site, "certbot", "latest"),
            "-c",
        ]
        runner.run(
            [
                *as_root,
                "chown 0:0 /etc/letsencrypt && mkdir -p /etc/letsencrypt/accounts && date > /etc/colorgate/tls/.changed",
            ]
        )
        data = acme.init(
            site, f"ops@{DOMAIN}", directory=pebble["directory"], ca_bundle=pebble["endpoint_ca"]
        )
        assert data["source"] == "ACME" and data["sans"] == [DOMAIN] and "Pebble" in data["issuer"]
        # handed to the edge's user once; everything certbot wrote since is that user's: it ran as it
        assert (
            runner.run(
                [*as_root, "find /etc/letsencrypt /etc/colorgate/tls ! -user 10003 | wc -l"]
            ).stdout.strip()
            == "0"
        )
        assert runner.run(
            [*as_root, "stat -c %u /etc/letsencrypt/renewal/*.conf"]
        ).stdout.split() == ["10003"]
        handshake = gates.tls_handshake(
            site.edge_address, site.https_port, DOMAIN, pebble["root"].read_text()
        )
        assert handshake.ok, handshake.error
        proc = tls_gates(site_env, pebble["root"])
        assert proc.returncode == 0, proc.stdout[-2000:]
