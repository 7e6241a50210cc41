"""Step definitions for the gates. Thin: each step asks the running stack (the `stack`
fixture, a deploy.release.view.StackView: the one thing of the engine they use, whichever
target the stack runs on) for a fact and asserts on it with a message that shows what
was seen."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from pytest_bdd import given, parsers, then, when

from deploy import contract
from deploy.colors import parse_color
from deploy.release.view import StackView
from steps.http import show as _show

_options: dict[str, str | None] = {}


def pytest_configure(config):
    _options["profile"] = config.getoption("--profile", default=None)


def app_features_dir():
    """The app's own features directory (next to its compose file), if it has one."""
    from deploy import profiles
    from deploy.errors import ColorgateError

    try:
        directory = profiles.load(_options.get("profile")).app.features_dir
    except ColorgateError:
        return None  # the gate_settings fixture reports it
    return directory if directory.is_dir() and any(directory.rglob("*.feature")) else None


@dataclass(frozen=True)
class Expected:
    color: str
    version: str


@pytest.fixture(scope="session")
def stack(gate_settings) -> StackView:
    """The running stack, as the gates see it (the one thing the steps ask)."""
    return StackView(gate_settings)


@pytest.fixture(scope="session")
def expected(request, stack) -> Expected:
    """The color and version under test: the options, else what the edge routes to."""
    color = request.config.getoption("target_color")
    version = request.config.getoption("target_version")
    if color and version:
        return Expected(parse_color(color), version)
    active = stack.live()
    assert active is not None, "no color is live on the edge: run `invoke up`"
    if color and parse_color(color) != active.color:
        running = stack.running_versions()
        return Expected(parse_color(color), version or running.get(parse_color(color), ""))
    return Expected(active.color, version or active.version)


@pytest.fixture(scope="session")
def app(gate_settings):
    """The app's contract (x-colorgate): services, routes, health checks, database."""
    return gate_settings.app


@pytest.fixture(scope="session")
def trust(stack) -> str | None:
    """The CA bundle the gates verify the edge against (read once per gate run)."""
    return stack.trust()


@pytest.fixture(scope="session")
def edge(stack, trust, expected):
    with stack.client(trust, expected.color) as client:
        yield client


@pytest.fixture(scope="session")
def published(stack) -> dict[str, list[str]]:
    """Host ports each service publishes (read once per gate run)."""
    return stack.published_ports()


# --- given / when --------------------------------------------------------------------


@given("the public edge", target_fixture="client")
def the_public_edge(edge):
    return edge


@when(
    parsers.parse('the edge requests "{path}" from the {service} of the color under test'),
    target_fixture="response",
)
def edge_requests(stack, expected, path, service):
    return stack.probe(service, expected.color, path)


@given("the stack's containers", target_fixture="ports")
def the_stacks_containers(published):
    return published


# --- then: the built-in gates --------------------------------------------------------------


@then("every routed service of the color under test passes its health check")
def candidate_healthy(gate_settings, stack, expected):
    problems = {s: p for s, p in stack.candidate_health(expected.color).items() if p}
    assert not problems, "; ".join(
        f"{gate_settings.app.copy_name(s, expected.color)} {gate_settings.app.health[s].path}: {p}"
        for s, p in problems.items()
    )


@then("no container of the color under test is restarting in a loop")
def candidate_not_crash_looping(gate_settings, stack, expected):
    if not stack.restarts_in_place:
        pytest.skip(
            "on a Swarm a task that crashes is replaced by a new one: the tasks' own states are read instead"
        )
    states = stack.states()
    looping = {
        name: states[name].restarted
        for name in gate_settings.app.color_services(expected.color)
        if name in states and states[name].restarted
    }
    assert not looping, "; ".join(f"{name} {why}" for name, why in looping.items())


@then("the color under test runs the version under test")
def runs_expected_version(gate_settings, stack, expected):
    states = stack.states()
    wrong = {
        name: (states[name].version if name in states else "absent")
        for name in gate_settings.app.color_services(expected.color)
        if name not in states or states[name].version != expected.version
    }
    assert not wrong, f"expected every {expected.color} service at {expected.version}: {wrong}"


@then("each service of the color under test runs on as many nodes as it can")
def candidate_spread(gate_settings, stack, expected):
    names = [gate_settings.app.copy_name(s, expected.color) for s in gate_settings.app.colored]
    problems = stack.spread_problems(names)  # none on one host, which is one node
    assert not problems, (
        "; ".join(f"{name}: {why}" for name, why in problems.items())
        + ": one node's loss would take more of it than it must; see `docker node ls` and the services' "
        "placement constraints; `docker service update --force SERVICE` spreads its tasks again"
    )


@then("every health check passes through the public edge")
def public_health(client, app, stack):
    checked = 0
    for service, check in app.health.items():
        route = app.route_for(check.path)
        if route is None or route.service != service:
            continue  # not reachable from outside at that path: the pre gate checked it
        response = client.get(check.path)
        problem = stack.health_problem(check, response.status_code, response.text)
        assert problem is None, f"{service} through the edge at {check.path}: {problem}"
        checked += 1
    if not checked:
        pytest.skip("no health check path is routed publicly to its own service")


@then("every route is answered by the color and version under test")
def routes_answered_by_expected(stack, client, app, expected):
    addresses = stack.addresses(expected.color)
    for route in app.routes:
        check = app.health.get(route.service)
        path = check.path if check and app.route_for(check.path) == route else route.path
        response = client.get(path)
        got = (
            response.headers.get("x-colorgate-color"),
            response.headers.get("x-colorgate-version"),
        )
        assert got == (expected.color, expected.version), (
            f"{path}: the edge says color {got[0]!r} version {got[1]!r}, expected {expected.color!r} {expected.version!r}: {_show(response)}"
        )
        upstream = (response.headers.get("x-colorgate-upstream") or "").rsplit(":", 1)[0]
        owner = addresses.get(upstream)
        assert owner == app.copy_name(route.service, expected.color), (
            f"{path} was answered from {upstream or 'no upstream'} ({owner or 'not a ' + expected.color + ' container'}), "
            f"expected {app.copy_name(route.service, expected.color)}"
        )


@then("the edge routes to the color and version under test")
def edge_routes_expected(stack, expected):
    """The live color, or during a canary the canary's (both colors are live then)."""
    active = stack.live()
    assert active is not None, "the edge routes to no color"
    if (active.color, active.version) == (expected.color, expected.version):
        return
    found = stack.canary()
    routed = f"{active.color} {active.version}" + (
        f", and {found['color']} {found['version']} to {found['percent']}% of users"
        if found
        else ""
    )
    assert (
        found
        and (found["color"], found["version"]) == (expected.color, expected.version)
        and found["color"] != active.color
    ), f"the edge routes to {routed}, expected {expected.color} {expected.version}"


@then("the color under test has no pending database migrations")
def migrations_at_head(gate_settings, stack, expected):
    m = gate_settings.app.migrations
    if not m or not m.status:
        pytest.skip("the app declares no migration status command (x-colorgate.migrations.status)")
    pending = stack.pending_migrations(expected.color)
    assert not pending, (
        f"{gate_settings.app.copy_name(m.service, expected.color)} has migrations the database "
        f"has not applied ({' '.join(m.status)} says so): run `invoke db.migrate`"
    )


@then("only the edge publishes host ports")
def only_edge_publishes(stack, ports):
    publishing = {service: p for service, p in ports.items() if p}
    # db.move's replication relay (TLS only, a one-off role): gone when the move ends
    if "dbrelay" in publishing and stack.lock_command() == "db.move":
        del publishing["dbrelay"]
    assert set(publishing) == {"edge"}, f"services publishing host ports: {publishing}"


@then("the database is attached only to internal networks")
def only_internal_networks(stack, app):
    if not app.database:
        pytest.skip("the app declares no database (x-colorgate.database)")
    service = app.database.service
    if stack.database_retired():
        # retired after db.move: the app uses a managed database; no local one is left
        # on a Swarm: its service, at 0 tasks
        found = stack.states().get(service)
        assert found is None or found.state == "exited", (
            f"the retired local database {service} is running again"
        )
        return
    networks = stack.networks(service)
    assert networks and all(n.internal for n in networks), (
        f"{service} networks: {networks}: put the database on networks marked `internal: true` in {app.file.name}"
    )


@then("nothing on the host listens on the database port")
def nothing_listens(stack, app):
    if not app.postgres:
        pytest.skip("the app declares no PostgreSQL database")
    listening = stack.listening_on(stack.postgres_port)
    assert not listening, f"listening on the host: {listening}"


@then("no connection to the database port succeeds from the host")
def no_host_connection(stack, app):
    if not app.postgres:
        pytest.skip("the app declares no PostgreSQL database")
    port = stack.postgres_port
    for address in sorted(stack.host_addresses()):
        assert not stack.connects(address, port), (
            f"{address}:{port} accepted a connection from the host"
        )


@given("a TLS handshake with the edge", target_fixture="handshake")
def tls_handshake(stack, trust):
    return stack.handshake(trust)


@then("the certificate chains to the configured CA and matches the domain")
def chain_and_name(gate_settings, handshake):
    assert handshake.ok, (
        f"{gate_settings.domain}:{gate_settings.https_port} failed verification against CA '{gate_settings.tls_ca}': {handshake.error}"
    )


@then("the certificate is not close to expiry")
def not_expiring(gate_settings, handshake):
    assert handshake.ok, f"handshake failed: {handshake.error}"
    days = (handshake.not_after - time.time()) / 86400
    assert days >= gate_settings.tls_min_days, (
        f"certificate expires in {days:.1f} days (minimum {gate_settings.tls_min_days})"
    )


@then(parsers.parse("a {protocol} handshake is refused"))
def protocol_refused(stack, protocol):
    import ssl

    version = {"TLS 1.0": ssl.TLSVersion.TLSv1, "TLS 1.1": ssl.TLSVersion.TLSv1_1}[protocol]
    result = stack.handshake(None, version)
    assert not result.ok, f"the edge accepted a {protocol} handshake ({result.protocol})"
    assert "NO_PROTOCOLS_AVAILABLE" not in result.error, (
        f"this client cannot offer {protocol}, so the check proves nothing: {result.error}"
    )


@then("HTTP redirects to HTTPS")
def http_redirects(gate_settings):
    import httpx

    port = "" if gate_settings.http_port == 80 else f":{gate_settings.http_port}"
    r = httpx.get(
        f"http://{gate_settings.edge_address}{port}/some/path?q=1",
        headers={"Host": gate_settings.domain},
        follow_redirects=False,
        trust_env=False,
        timeout=5,
    )
    assert r.status_code == 301, f"{r.url} answered {r.status_code}"
    assert r.headers.get("location") == f"{gate_settings.https_url}/some/path?q=1", (
        f"redirects to {r.headers.get('location')}"
    )


@then("the response sets HSTS for at least a year")
def hsts(response):
    values = response.headers.get_list("strict-transport-security")
    value = values[0] if len(values) == 1 else ", ".join(values)
    max_age = (
        int(value.split("max-age=")[1].split(";")[0])
        if len(values) == 1 and "max-age=" in value
        else 0
    )
    assert max_age >= 31536000, f"Strict-Transport-Security is {value!r}"


# --- hardening -------------------------------------------------------------------------


@then("the color under test and the edge run locked down")
def locked_down(gate_settings, stack, expected):
    services = [*gate_settings.app.color_services(expected.color), "edge"]
    found = stack.confinements(services)
    assert set(found) == set(services), f"not running: {sorted(set(services) - set(found))}"
    weak = {name: c.problems() for name, c in found.items() if c.problems()}
    assert not weak, (
        f"not locked down: {weak}: remove what undoes it (cap_add, read_only: false, user: root, "
        f"no-new-privileges:false) from {gate_settings.app.file.name}"
    )


@then("no other container can gain privileges")
def no_privilege_gain(stack):
    others = [
        name
        for name, s in stack.states().items()
        if s.state == "running" and s.color is None and name != "edge"
    ]
    declared = stack.declared_capabilities(others)
    gains = {}
    for name, c in stack.confinements(others).items():
        problems = [
            p
            for p in c.gains()
            if not (p.startswith("capabilities added") and set(c.cap_add) <= declared[name])
        ]
        if problems:
            gains[name] = problems
    assert not gains, f"can gain privileges: {gains}"


@then("no container holds a secret in its environment")
def no_secret_in_environment(gate_settings, stack):
    if gate_settings.secrets_in_env == "allow":
        return  # the operator accepted it (COLORGATE_SECRETS_IN_ENV=allow)
    running = [name for name, s in stack.states().items() if s.state == "running"]
    held = {
        name: list(c.secret_env) for name, c in stack.confinements(running).items() if c.secret_env
    }
    db = gate_settings.app.database
    fix = (
        f"let the app read its URL from a file (x-colorgate.database.file: {db.env[0]}_FILE in {gate_settings.app.file.name}), "
        if db and db.env and not db.reads_files
        else ""
    )
    assert not held, (
        f"secrets in container environments (docker inspect shows them): {held}: {fix}"
        "or accept it with COLORGATE_SECRETS_IN_ENV=allow"
    )


@then("the color under test reaches the stack's database as its own role, not a superuser")
def own_database_role(gate_settings, stack, expected):
    s = gate_settings
    if not s.app.postgres or s.database_url:
        return  # no database of the stack's own in use: a managed one's roles are its operator's
    found = stack.database_roles()
    assert found.role_super is False, (
        f"the app's role {s.app_db_user} is missing or a superuser: run `invoke up` to set it up"
    )
    assert found.database_owner == s.app_db_user, (
        f"the database {s.postgres_db} is owned by {found.database_owner}, "
        f"not the app's role {s.app_db_user}: run `invoke up` to hand it over"
    )
    mine = stack.addresses(expected.color)
    as_super = sorted(
        {f"{mine[addr]} as {user}" for addr, user, sup in found.sessions if sup and addr in mine}
    )
    assert not as_super, (
        f"connected to the database as a superuser: {as_super}: give it the URL Colorgate renders (its own role)"
    )


@then("the response carries the edge's security headers")
def security_headers(gate_settings, response):
    """Each of the edge's security headers once: the edge's value, or, on a route whose
    app owns that header (routes[].app_headers), the app's."""
    route = gate_settings.app.route_for(response.url.path)
    owned = route.app_headers if route else ()
    wrong = {}
    for name, value in contract.SECURITY_HEADERS.items():
        sent = response.headers.get_list(name)
        if len(sent) > 1:
            wrong[name] = f"sent {len(sent)} times: {sent}"
        elif name in owned and not sent:
            wrong[name] = (
                f"missing: the app owns it on {route.path} (x-colorgate.routes[].app_headers) but sent none"
            )
        elif name not in owned and sent != [value]:
            wrong[name] = sent[0] if sent else "missing"
    assert not wrong, f"{response.url}: security headers missing or changed: {wrong}"
