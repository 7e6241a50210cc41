"""The sample stack on a real Docker engine: up from nothing, HTTPS through the edge,
no way into PostgreSQL or the backends from the host, data that survives down + up."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import secrets
import ssl
import time

import httpx
import pytest

from deploy import access, config, contract, edge, errors, stack, starting
from deploy.edge import tls
from deploy.errors import ConfigError
from deploy.release import gates, traffic
from deploy.target import compose, facts, runner, sockets, targets

from .conftest import free_port, invoke


@pytest.fixture(scope="module")
def ca_pem(live_stack, settings):
    return tls.read_local_ca(settings)


@pytest.fixture
def client(settings, ca_pem):
    with gates.edge_client(settings, ca_pem) as c:
        yield c


def test_up_from_nothing_brings_every_service_healthy(live_stack, settings):
    services = {s["service"]: s for s in live_stack["services"]}
    assert set(services) == {"edge", "postgres", "frontend_blue", "backend_blue"}
    # the engine checks five minutes apart (an idle host stays idle), so right after `up` it may not have
    # checked yet; `up` ran each container's own check itself, and it passes
    assert all(
        s["state"] == "running" and s["health"] in ("healthy", "starting")
        for s in services.values()
    ), services
    assert all(facts.passes_healthcheck(settings, name) for name in services)
    assert live_stack["active"] == {"color": "blue", "version": "v1"}
    assert services["backend_blue"]["version"] == "v1"


def test_a_failing_health_check_is_seen_without_waiting_for_the_engine(live_stack, settings):
    """The active check runs the container's own test: a container whose check fails is not
    ready, while the engine (checking five minutes apart) still says `starting`."""
    name = facts.container(settings, "failing")
    image = facts.inspect(settings, facts.container(settings, "edge"))["Config"]["Image"]
    try:
        runner.run(
            [
                "docker",
                "run",
                "--detach",
                "--name",
                name,
                "--entrypoint",
                "sleep",
                "--health-cmd",
                "exit 3",
                "--health-interval",
                "300s",
                image,
                "120",
            ]
        )
        assert facts.inspect(settings, name)["State"]["Health"]["Status"] == "starting"
        assert not facts.passes_healthcheck(settings, "failing")
    finally:
        runner.run(["docker", "rm", "--force", name], check=False)


def test_https_serves_the_spa_and_deep_links(client):
    for path in ("/", "/patients/42"):
        r = client.get(path)
        assert r.status_code == 200 and 'data-app="colorgate-sample"' in r.text, (
            path,
            r.status_code,
            r.text[:200],
        )
        assert r.headers["x-colorgate-color"] == "blue"
        assert r.headers["strict-transport-security"] == "max-age=63072000"
    assert client.get("/assets/app.js").headers["content-type"].startswith("application/javascript")
    assert client.get("/assets/missing.js").status_code == 404  # only routes fall back, not assets


def test_api_health_reports_database_ok(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "color": "blue", "version": "v1"}
    assert client.get("/api/version").json() == {"color": "blue", "version": "v1"}


def test_certificate_is_verified_for_the_domain_and_not_for_another(settings, ca_pem):
    with httpx.Client(verify=tls.client_context(ca_pem), trust_env=False) as c:
        # IP SAN
        assert c.get(f"https://127.0.0.1:{settings.https_port}/api/version").status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        # system CAs
        httpx.get(f"{settings.https_url}/", verify=ssl.create_default_context(), trust_env=False)


def test_tls_configuration_follows_mozilla_intermediate(live_stack, settings, client):
    dump = runner.run(
        [
            "docker",
            "exec",
            edge.edge_container(settings),
            "nginx",
            "-T",
            "-q",
            "-c",
            edge.NGINX_CONF,
        ]
    ).stdout
    lines = [line.strip() for line in dump.splitlines()]
    assert [line for line in lines if line.startswith("ssl_protocols")] == [
        "ssl_protocols TLSv1.2 TLSv1.3;"
    ]
    assert "ssl_prefer_server_ciphers off;" in lines and "ssl_session_tickets off;" in lines
    assert "ssl_ecdh_curve X25519:prime256v1:secp384r1;" in lines and "server_tokens off;" in lines
    assert any(line.startswith("ssl_dhparam ") for line in lines)

    # what a client sees: modern suites accepted, static-RSA and CBC suites refused, no version in Server
    def handshake(cipher: str) -> bool:
        import socket

        ctx = ssl.create_default_context(cadata=tls.read_local_ca(settings))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
        try:
            with (
                socket.create_connection(("127.0.0.1", settings.https_port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=settings.domain),
            ):
                return True
        except ssl.SSLError:
            return False

    assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert not handshake("AES128-GCM-SHA256") and not handshake("ECDHE-ECDSA-AES128-SHA")
    assert client.get("/").headers["server"] == "nginx"


def test_http_redirects_to_https_except_acme_challenges(settings):
    r = httpx.get(f"{settings.http_url}/patients/42?x=1", follow_redirects=False, trust_env=False)
    assert r.status_code == 301 and r.headers["location"] == f"{settings.https_url}/patients/42?x=1"
    acme = httpx.get(f"{settings.http_url}/.well-known/acme-challenge/token", trust_env=False)
    assert acme.status_code == 404  # served from the webroot (empty), not redirected


def test_http_redirects_to_the_configured_domain_whatever_host_the_client_names(settings):
    r = httpx.get(
        f"{settings.http_url}/login?next=/",
        headers={"Host": "evil.example"},
        follow_redirects=False,
        trust_env=False,
    )
    assert (
        r.status_code == 301
        and r.headers["location"] == f"https://{settings.domain}:{settings.https_port}/login?next=/"
    )


def test_the_edge_sends_security_headers_on_every_answer(client):
    """Once each: the API sends its own nosniff, which the edge's replaces."""
    for r in (
        client.get("/"),
        client.get("/api/version"),
        client.get("/api/notes/999999999"),
        client.get("/healthz"),
    ):
        h = r.headers
        assert all(len(h.get_list(name)) == 1 for name in contract.SECURITY_HEADERS), (r.url, h)
        assert (
            h["strict-transport-security"] == "max-age=63072000"
            and h["x-content-type-options"] == "nosniff"
        ), r.url
        assert (
            h["referrer-policy"] == "strict-origin-when-cross-origin"
            and h["x-frame-options"] == "DENY"
        )
        assert (
            h["content-security-policy"]
            == "frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
        )


def test_the_app_builds_its_public_url_from_the_edges_forwarded_headers(settings, client):
    """As a browser asks (the port in Host, when not 443): the app sees the public scheme, host and port,
    and none of the gates' tokens (they would be in its logs)."""
    got = client.get(
        "/api/whoami",
        headers={
            "Host": f"{settings.domain}:{settings.https_port}",
            "X-Colorgate-Gate": edge.read_gate_token(settings),
            "X-Colorgate-Serve": "green",
        },
    ).json()
    assert got["colorgate"] == [], got
    assert got["url"] == f"https://{settings.domain}:{settings.https_port}/" and got["port"] == str(
        settings.https_port
    )
    assert got["forwarded"].startswith("for=") and got["forwarded"].endswith(
        f';host="{settings.domain}:{settings.https_port}";proto=https'
    ), got


def test_the_edge_tells_only_the_gates_which_container_answered(settings, client):
    assert "x-colorgate-upstream" not in client.get("/api/version").headers
    with gates.edge_client(settings, tls.read_local_ca(settings), gate=True) as gate:
        upstream = gate.get("/api/version").headers["x-colorgate-upstream"]
    owner = (
        targets.of(settings)
        .addresses(settings, edge.read_active(settings).color)
        .get(upstream.rsplit(":", 1)[0])
    )
    assert owner == settings.app.copy_name("backend", edge.read_active(settings).color), upstream


def test_the_app_sees_the_address_the_edge_saw_not_the_one_a_client_claims(
    live_stack, settings, client
):
    marker = secrets.token_hex(4)
    assert (
        client.get(f"/api/missing-{marker}", headers={"X-Forwarded-For": "6.6.6.6"}).status_code
        == 404
    )
    live = edge.read_active(settings).color
    logs = runner.run(
        ["docker", "logs", facts.container(settings, settings.app.copy_name("backend", live))]
    ).stdout
    line = [line for line in logs.splitlines() if marker in line][
        -1
    ]  # the app logs failed requests with X-Forwarded-For
    assert "6.6.6.6" not in line and ipaddress.ip_address(line.split()[0]), line


def test_the_edge_limits_requests_per_client_but_not_the_gates_and_reads_the_client_behind_a_trusted_proxy(
    live_stack, settings
):
    """The real edge image on its own, with a low limit: over rate + burst, 429 (with
    the security headers); the limits are in its configuration as set. The gates' token
    lifts them; behind a trusted proxy (here any peer) each client named in
    X-Forwarded-For has a limit of its own."""
    name, port = f"{settings.project}-limits-{secrets.token_hex(3)}", free_port()
    runner.run(
        [
            "docker",
            "run",
            "--detach",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:8443",
            "-e",
            "COLORGATE_RATE_LIMIT=1",
            "-e",
            "COLORGATE_RATE_BURST=3",
            "-e",
            "COLORGATE_CONN_LIMIT=7",
            "-e",
            "COLORGATE_TRUSTED_PROXIES=0.0.0.0/0",
            "-e",
            f"COLORGATE_EDGE_ROUTES={edge.edge_routes_b64(settings.app)}",
            f"{settings.image_prefix}edge:latest",
        ]
    )
    try:
        # up: its plain-HTTP port answers inside (the limits are on HTTPS only)
        for _ in range(100):
            if (
                runner.run(
                    ["docker", "exec", name, "curl", "-sf", "http://127.0.0.1:8080/healthz"],
                    check=False,
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False, trust_env=False) as c:
            answers = [
                c.get("/api/version") for _ in range(8)
            ]  # an app route (no color is live here: 503)
            token = runner.run(
                ["docker", "exec", name, "cat", "/etc/colorgate/state/gate-token"]
            ).stdout.strip()
            gates_own = [
                c.get("/api/version", headers={"X-Colorgate-Gate": token}).status_code
                for _ in range(8)
            ]
            forged = [
                c.get("/api/version", headers={"X-Colorgate-Gate": "0" * 32}).status_code
                for _ in range(3)
            ]
            clients = [
                c.get("/api/version", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
                for n in range(8)
            ]
        statuses = [r.status_code for r in answers]
        # 1 + a burst of 3, then refused
        assert 429 not in statuses[:4] and statuses.count(429) >= 3, statuses
        assert answers[-1].headers["strict-transport-security"] == "max-age=63072000"
        # (a second refills one)
        assert 429 not in gates_own and forged.count(429) >= 2, (
            gates_own,
            forged,
        )
        assert 429 not in clients, clients
        conf = runner.run(
            ["docker", "exec", name, "nginx", "-T", "-q", "-c", edge.NGINX_CONF]
        ).stdout
        assert "limit_conn cg_conn 7;" in conf and "rate=1r/s" in conf
    finally:
        runner.run(["docker", "rm", "--force", name], check=False)


def test_notes_crud_through_the_edge(client):
    created = client.post("/api/notes", json={"body": "first"}).json()
    assert client.get(f"/api/notes/{created['id']}").json()["body"] == "first"
    assert (
        client.put(f"/api/notes/{created['id']}", json={"body": "edited"}).json()["body"]
        == "edited"
    )
    assert client.post("/api/notes", json={"nope": 1}).status_code == 400
    assert client.delete(f"/api/notes/{created['id']}").status_code == 204
    assert client.get(f"/api/notes/{created['id']}").status_code == 404


def test_only_the_edge_publishes_ports(live_stack, settings):
    ports = sockets.published_ports(settings)
    assert ports["edge"] == sorted(
        [f"127.0.0.1:{settings.http_port}->8080/tcp", f"127.0.0.1:{settings.https_port}->8443/tcp"]
    )
    assert all(not p for name, p in ports.items() if name != "edge"), ports


def test_postgres_and_backends_unreachable_from_the_host(live_stack, settings):
    # postgres is on the internal network only; the backend also joins the web network
    assert [(n.name, n.internal) for n in sockets.service_networks(settings, "postgres")] == [
        (f"{settings.project}_data", True)
    ]
    assert {n.internal for n in sockets.service_networks(settings, "backend_blue")} == {True, False}
    for port in (5432, 8000):
        assert not sockets.tcp_connects("127.0.0.1", port), (
            f"127.0.0.1:{port} accepted a connection"
        )
    # and PostgreSQL refuses connections without the password even from inside the stack
    probe = compose.compose_cmd(
        settings,
        "exec",
        "-T",
        "backend_blue",
        "python3",
        "-c",
        f"import psycopg2; psycopg2.connect(host='postgres', user='{settings.postgres_user}', "
        f"dbname='{settings.postgres_db}', password='wrong')",
    )
    proc = runner.run(probe, env=settings.compose_env(), check=False)
    assert proc.returncode != 0 and "password authentication failed" in proc.stderr


def test_every_container_runs_locked_down_with_limits_and_rotated_logs(live_stack, settings):
    states = facts.service_states(settings)
    running = [name for name, s in states.items() if s.state == "running"]
    for name, c in targets.of(settings).confinements(settings, running).items():
        assert not c.problems(), (name, c.problems())
        host = facts.inspect(settings, facts.container(settings, name))["HostConfig"]
        assert host["PidsLimit"] == settings.pids_limit and host["Memory"] == 1024**3, name
        assert host["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-size": "10m", "max-file": "3"},
        }, name
        assert "/tmp" in host["Tmpfs"], name


def test_app_containers_run_as_non_root(live_stack, settings):

    for service in ("edge", "postgres", "frontend_blue", "backend_blue"):
        uid = runner.run(
            ["docker", "exec", f"{settings.project}-{service}-1", "id", "-u"]
        ).stdout.strip()
        assert uid != "0", f"{service} runs as root"


def test_status_json_and_text(live_stack, stack_env):
    proc = invoke("status", "--json", env=stack_env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["active"]["color"] == "blue"
    assert {s["service"]: s["health"] for s in data["services"]}["backend_blue"] == "healthy"
    text = invoke("status", env=stack_env).stdout
    assert "active color: blue (v1)" in text and "backend_blue" in text


def test_exec_runs_a_command_in_the_live_colors_container_and_exits_with_its_code(
    live_stack, stack_env
):
    ran = invoke("exec", "backend", "--", "echo", "from $COLORGATE_COLOR; id -u", env=stack_env)
    assert (
        ran.returncode == 0
        and ran.stdout.splitlines()[0] == "from blue"
        and ran.stdout.splitlines()[1] != "0"
    ), ran.stderr
    # a shared service by name
    assert invoke("exec", "postgres", "--", "pg_isready -q -h /tmp", env=stack_env).returncode == 0
    failed = invoke("exec", "backend", "--color", "blue", "--", "exit 7", env=stack_env)
    assert failed.returncode == 7 and failed.stderr == ""
    unknown = invoke("exec", "api", "--", "true", env=stack_env)
    assert unknown.returncode == errors.BAD_INPUT and unknown.stderr.strip().startswith(
        "colorgate: unknown service 'api': use one of postgres, "
    )


def test_tls_status_describes_the_served_certificate(live_stack, stack_env):
    proc = invoke("tls.status", "--json", env=stack_env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["subject"] == "CN=localhost" and "127.0.0.1" in data["sans"]
    assert (
        data["issuer"] == "CN=Colorgate local CA (localhost)"
        and data["source"] == "local CA (made by the edge)"
    )
    assert 364 < data["days_left"] <= 365  # Mozilla's intermediate profile: at most 366 days


def test_logs_of_one_service(live_stack, stack_env):
    proc = invoke("logs", "backend_blue", "--tail", "5", env=stack_env)
    bad = invoke("logs", "backend_red", env=stack_env)
    assert bad.returncode == errors.BAD_INPUT and bad.stderr.strip().startswith(
        "colorgate: unknown service 'backend_red': use one of postgres, edge"
    )
    assert proc.returncode == 0 and "backend_blue" in proc.stdout
    # the last migrations of a color are kept with their output (up ran blue's)
    kept = invoke("logs", "migrations", env=stack_env)
    assert (
        kept.returncode == 0 and "---- the last migrations of blue ----\nmigrate: " in kept.stdout
    ), kept.stdout + kept.stderr
    assert "migrate: at head (" in kept.stdout.split("---- the last migrations of blue ----")[1]


def test_the_edge_logs_every_request_with_the_color_that_answered_it(
    live_stack, settings, stack_env, client
):
    """Real traffic per color, read through the Engine API: what the app answered under
    its color and version, what the edge answered itself apart; `invoke traffic` shows it."""
    live = edge.read_active(settings)
    started = time.time() - 0.5
    for _ in range(20):
        assert client.get("/api/version").status_code == 200
    for _ in range(5):
        assert client.get("/api/no-such-thing?token=secret-in-query").status_code == 404
    deadline = time.monotonic() + 5  # the log is flushed every second
    while time.monotonic() < deadline:
        requests = [r for r in traffic.read(settings, started) if r.path.startswith("/api/")]
        if len(requests) >= 25:
            break
        time.sleep(0.2)
    mine = [r for r in requests if r.color == live.color]
    assert len(mine) >= 25 and {r.version for r in mine} == {live.version}
    assert sorted({r.status for r in mine}) == [200, 404] and all(0 <= r.seconds < 5 for r in mine)
    # the path without its query: no tokens in logs
    assert not any("secret-in-query" in r.path for r in requests)
    found = traffic.figures(requests)[live.color]
    assert found.requests >= 25 and found.errors == 0 and found.p99_ms >= found.p50_ms
    shown = invoke("traffic", "--seconds", "120", "--json", env=stack_env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[live.color]["requests"] >= 25
    bad = invoke("traffic", "--seconds", "soon", env=stack_env)
    assert (
        bad.returncode == errors.BAD_INPUT
        and bad.stderr.strip()
        == "colorgate: --seconds should be a number of seconds from 1 to 86400"
    )


def test_gates_pass_on_the_live_stack(live_stack, stack_env, tmp_path):
    import subprocess
    import sys

    report = tmp_path / "gates.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "features/",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        env={**os.environ, **stack_env},
        capture_output=True,
        text=True,
        cwd=str(stack.__file__).rsplit("/deploy/", 1)[0],
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    xml = report.read_text()
    assert 'failures="0"' in xml and 'errors="0"' in xml and " passed" in proc.stdout
    for feature in ("Health", "No public database port", "TLS valid", "Upstream active"):
        assert f'value="{feature}"' in xml, f"the {feature} gate did not run"
    # the app's own: a record written, read back, changed and removed (its own step file too)
    assert 'value="A note written through the API is read back, changed and removed"' in xml


def test_maintenance_mode_answers_503_with_retry_after_while_the_gates_and_the_edges_health_go_on(
    live_stack, settings, stack_env, client
):
    """Users get a 503 page with Retry-After (HTML for a browser, JSON otherwise) and
    the edge's security headers; the edge's own health stays up; Colorgate's gates pass
    through it (they judge the app); status and the history say so."""
    import subprocess
    import sys

    bad = invoke("maintenance", "--on", "--message", "<script>alert(1)</script>", env=stack_env)
    assert bad.returncode == errors.BAD_INPUT and bad.stderr.strip().splitlines()[-1].startswith(
        "colorgate: the maintenance message must be one line"
    )
    assert client.get("/api/version").status_code == 200  # nothing changed
    on = invoke(
        "maintenance",
        "--on",
        "--message",
        "Back at 14:00: upgrading the database",
        "--retry",
        "120",
        env=stack_env,
    )
    try:
        assert (
            on.returncode == 0
            and on.stdout.strip() == "maintenance mode on: the app's routes answer 503"
        ), on.stderr
        page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert (
            page.status_code == 503
            and page.headers["retry-after"] == "120"
            and page.headers["x-colorgate-maintenance"] == "on"
        )
        assert "Back at 14:00: upgrading the database" in page.text and page.headers[
            "content-type"
        ].startswith("text/html")
        assert (
            page.headers["strict-transport-security"]
            and page.headers["x-content-type-options"] == "nosniff"
        )
        api = client.get("/api/version")
        assert api.status_code == 503 and api.json() == {
            "error": "maintenance",
            "message": "Back at 14:00: upgrading the database",
        }
        # the edge's own health: its container stays healthy
        assert client.get("/healthz").status_code == 200
        status = json.loads(invoke("status", "--json", env=stack_env).stdout)["maintenance"]
        assert (
            status["message"] == "Back at 14:00: upgrading the database"
            and status["retry"] == "120"
            and "bypass" not in status
        )
        assert "MAINTENANCE MODE since " in invoke("status", env=stack_env).stdout
        gated = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "features/",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "post",
            ],
            env={**os.environ, **stack_env},
            capture_output=True,
            text=True,
            cwd=str(stack.__file__).rsplit("/deploy/", 1)[0],
        )
        assert gated.returncode == 0, gated.stdout[-2000:]
    finally:
        off = invoke("maintenance", "--off", env=stack_env)
    assert off.returncode == 0 and off.stdout.strip() == "maintenance mode off: the app is served"
    assert client.get("/api/version").status_code == 200
    assert (
        invoke("maintenance", "--off", env=stack_env).stdout.strip() == "maintenance mode was off"
    )
    records = [r for r in edge.read_history(settings) if r["action"] == "maintenance"]
    assert [(r["outcome"], r["detail"]) for r in records[-2:]] == [
        ("on", "Back at 14:00: upgrading the database"),
        ("off", ""),
    ]


def test_up_again_changes_nothing(live_stack, settings):
    before = {s.service: s for s in facts.service_states(settings).values()}
    ids_before = {
        name: facts.inspect(settings, f"{settings.project}-{name}-1")["Id"] for name in before
    }
    starting.start_stack(settings)
    ids_after = {
        name: facts.inspect(settings, f"{settings.project}-{name}-1")["Id"] for name in before
    }
    assert ids_after == ids_before


def test_up_refuses_a_project_whose_volumes_another_app_made(live_stack, settings, stack_env):
    """Another app given the same COLORGATE_PROJECT would have taken this one's database
    volume: refused in one line before anything is made or started."""
    before = {
        s.service: facts.inspect(settings, facts.container(settings, s.service))["Id"]
        for s in facts.service_states(settings).values()
    }
    other = str(config.project_root() / "examples" / "static-site")
    proc = invoke("up", env={**stack_env, "COLORGATE_APP": other})
    assert proc.returncode == errors.BAD_INPUT, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"colorgate: the compose project {settings.project} holds the app 'spa-api-postgres' (its volumes, its database), not "
        "'static-site': set COLORGATE_PROJECT to a project of this app's own (default: its name), or, if it is the same app "
        "renamed, give its compose file `name: spa-api-postgres`"
    )
    after = {
        s.service: facts.inspect(settings, facts.container(settings, s.service))["Id"]
        for s in facts.service_states(settings).values()
    }
    assert after == before


def test_an_app_that_ran_under_the_old_default_project_is_told_to_keep_it(live_stack, settings):
    """Projects were `colorgate` for every app: upgraded, an app that ran so is named its
    old project rather than started anew, empty (the live stack stands in for the old
    project here; nothing named `colorgate` is touched)."""
    renamed = dataclasses.replace(
        settings, project=f"{settings.project}-new", raw={**settings.raw, "COLORGATE_PROJECT": ""}
    )
    with pytest.raises(
        ConfigError,
        match=rf"^this app runs as the compose project {settings.project} \(the default before "
        rf"projects were named after their app\), with its database there: set COLORGATE_PROJECT={settings.project} in ",
    ):
        access.check_project(renamed, legacy=settings.project)
    other = dataclasses.replace(
        renamed, app=contract.load(config.project_root() / "examples" / "static-site")
    )
    # another app's old project is not this one's
    access.check_project(other, legacy=settings.project)


def test_down_keeps_data_and_up_brings_it_back(live_stack, settings, ca_pem):
    with gates.edge_client(settings, ca_pem) as c:
        note = c.post("/api/notes", json={"body": "survives down"}).json()
    stack.down(settings)
    assert facts.service_states(settings) == {}
    kept = runner.run(
        ["docker", "container", "inspect", stack.migrations_container(settings, "blue")],
        check=False,
    )
    assert kept.returncode != 0  # the kept migrations go with the stack
    starting.start_stack(settings)
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        assert c.get(f"/api/notes/{note['id']}").json()["body"] == "survives down"
        assert c.get("/api/health").json()["color"] == "blue"
