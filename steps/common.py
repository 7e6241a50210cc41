"""Step definitions for the gates. Thin: each step asks deploy.gates for a fact and
asserts on it with a message that shows what was seen."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from pytest_bdd import given, parsers, then, when

from deploy import gates, stack
from deploy.colors import parse_color


@dataclass(frozen=True)
class Expected:
    color: str
    version: str


@pytest.fixture(scope="session")
def expected(request, gate_settings) -> Expected:
    """The color and version under test: the options, else what the edge routes to."""
    color = request.config.getoption("target_color")
    version = request.config.getoption("target_version")
    if color and version:
        return Expected(parse_color(color), version)
    active = stack.read_active(gate_settings)
    assert active is not None, "no color is live on the edge: run `invoke up`"
    if color and parse_color(color) != active.color:
        states = stack.service_states(gate_settings)
        backend = states.get(f"backend_{parse_color(color)}")
        return Expected(parse_color(color), version or (backend.version if backend else ""))
    return Expected(active.color, version or active.version)


@pytest.fixture(scope="session")
def trust(gate_settings) -> str | None:
    """The CA bundle the gates verify the edge against (read once per gate run)."""
    return gates.trust_pem(gate_settings)


@pytest.fixture(scope="session")
def edge(gate_settings, trust):
    with gates.edge_client(gate_settings, trust) as client:
        yield client


@pytest.fixture(scope="session")
def published(gate_settings) -> dict[str, list[str]]:
    """Host ports each service publishes (read once per gate run)."""
    return gates.published_ports(gate_settings)


def _show(response) -> str:
    url = getattr(response, "url", None) or response.request.url
    return f"{url} answered {response.status_code}: {response.text[:200]!r}"


# --- given / when --------------------------------------------------------------------


@given("the public edge", target_fixture="client")
def the_public_edge(edge):
    return edge


@when(parsers.parse('I request "{path}" over HTTPS'), target_fixture="response")
def request_over_https(client, path):
    return client.get(path)


@when(parsers.parse('the edge requests "{path}" from the {role} of the color under test'), target_fixture="response")
def edge_requests(gate_settings, expected, path, role):
    return gates.probe_from_edge(gate_settings, f"{role}_{expected.color}", path)


@given("the stack's containers", target_fixture="ports")
def the_stacks_containers(published):
    return published


# --- then ------------------------------------------------------------------------------


@then("the response is the single-page app")
def is_the_spa(response):
    assert response.status_code == 200, _show(response)
    assert 'data-app="colorgate-sample"' in response.text, f"not the SPA: {_show(response)}"


@then(parsers.parse('the JSON field "{field}" is "{value}"'))
def json_field_is(response, field, value):
    assert response.status_code == 200, _show(response)
    body = response.json()
    assert str(body.get(field)) == value, f"{field} is {body.get(field)!r}, expected {value!r}: {_show(response)}"


@then("the response comes from the color and version under test")
def from_expected(response, expected):
    got = (response.headers.get("x-colorgate-color"), response.headers.get("x-colorgate-version"))
    assert got == (expected.color, expected.version), (
        f"answered by color {got[0]!r} version {got[1]!r}, expected {expected.color!r} {expected.version!r}: {_show(response)}"
    )


@then("the edge routes to the color and version under test")
def edge_routes_expected(gate_settings, expected):
    active = stack.read_active(gate_settings)
    assert active is not None, "the edge routes to no color"
    assert (active.color, active.version) == (expected.color, expected.version), (
        f"the edge routes to {active.color} {active.version}, expected {expected.color} {expected.version}"
    )


@then("the color under test has no pending database migrations")
def migrations_at_head(gate_settings, expected):
    pending = stack.pending_migrations(gate_settings, expected.color)
    assert pending == 0, f"backend_{expected.color} has {pending} migration(s) the database has not applied: run `invoke db.migrate`"


@then("only the edge publishes host ports")
def only_edge_publishes(ports):
    publishing = {service: p for service, p in ports.items() if p}
    assert set(publishing) == {"edge"}, f"services publishing host ports: {publishing}"


@then(parsers.parse("{service} is attached only to internal networks"))
def only_internal_networks(gate_settings, service):
    if service == "postgres" and stack.read_database_record(gate_settings).get("retired"):
        # retired after db.move: the app uses a managed database; no local one is left
        assert "postgres" not in stack.service_states(gate_settings), "the retired local PostgreSQL is running again"
        return
    networks = gates.service_networks(gate_settings, service)
    assert networks and all(n.internal for n in networks), f"{service} networks: {networks}"


@then(parsers.parse("nothing on the host listens on port {port:d}"))
def nothing_listens(gate_settings, port):
    listening = gates.listening_on_port(gate_settings, port)
    assert not listening, f"listening on the host: {listening}"


@then(parsers.parse("no connection to port {port:d} succeeds from the host"))
def no_host_connection(gate_settings, port):
    for address in sorted({"127.0.0.1", gate_settings.edge_address}):
        assert not gates.tcp_connects(address, port), f"{address}:{port} accepted a connection from the host"


@given("a TLS handshake with the edge", target_fixture="handshake")
def tls_handshake(gate_settings, trust):
    return gates.tls_handshake(gate_settings.edge_address, gate_settings.https_port, gate_settings.domain, trust)


@then("the certificate chains to the configured CA and matches the domain")
def chain_and_name(gate_settings, handshake):
    assert handshake.ok, (
        f"{gate_settings.domain}:{gate_settings.https_port} failed verification against CA '{gate_settings.tls_ca}': {handshake.error}"
    )


@then("the certificate is not close to expiry")
def not_expiring(gate_settings, handshake):
    assert handshake.ok, f"handshake failed: {handshake.error}"
    days = (handshake.not_after - time.time()) / 86400
    assert days >= gate_settings.tls_min_days, f"certificate expires in {days:.1f} days (minimum {gate_settings.tls_min_days})"


@then(parsers.parse("a {protocol} handshake is refused"))
def protocol_refused(gate_settings, protocol):
    import ssl

    version = {"TLS 1.0": ssl.TLSVersion.TLSv1, "TLS 1.1": ssl.TLSVersion.TLSv1_1}[protocol]
    result = gates.tls_handshake(gate_settings.edge_address, gate_settings.https_port, gate_settings.domain, None, version)
    assert not result.ok, f"the edge accepted a {protocol} handshake ({result.protocol})"
    assert "NO_PROTOCOLS_AVAILABLE" not in result.error, f"this client cannot offer {protocol}, so the check proves nothing: {result.error}"


@then("HTTP redirects to HTTPS")
def http_redirects(gate_settings):
    import httpx

    port = "" if gate_settings.http_port == 80 else f":{gate_settings.http_port}"
    r = httpx.get(f"http://{gate_settings.edge_address}{port}/some/path?q=1", headers={"Host": gate_settings.domain},
                  follow_redirects=False, trust_env=False, timeout=5)
    assert r.status_code == 301, f"{r.url} answered {r.status_code}"
    assert r.headers.get("location") == f"{gate_settings.https_url}/some/path?q=1", f"redirects to {r.headers.get('location')}"


@then("the response sets HSTS for at least a year")
def hsts(response):
    value = response.headers.get("strict-transport-security", "")
    max_age = int(value.split("max-age=")[1].split(";")[0]) if "max-age=" in value else 0
    assert max_age >= 31536000, f"Strict-Transport-Security is {value!r}"
