"""Step definitions for the gates. Thin: each step asks deploy.gates for a fact and
asserts on it with a message that shows what was seen."""

from __future__ import annotations

import pytest
from pytest_bdd import given, parsers, then, when

from deploy import gates, stack
from deploy.colors import COLORS


@pytest.fixture(scope="session")
def live(gate_settings):
    """The live color on the target (--target-color checks it is the expected one)."""
    active = stack.read_active(gate_settings)
    assert active is not None, "no color is live on the edge: run `invoke up`"
    return active


@pytest.fixture(scope="session")
def edge(gate_settings):
    with gates.edge_client(gate_settings) as client:
        yield client


@given("the public edge", target_fixture="client")
def the_public_edge(edge):
    return edge


@when(parsers.parse('I request "{path}" over HTTPS'), target_fixture="response")
def request_over_https(client, path):
    return client.get(path)


@then("the response is the single-page app")
def is_the_spa(response):
    assert response.status_code == 200, f"{response.request.url} answered {response.status_code}: {response.text[:200]}"
    assert 'data-app="colorgate-sample"' in response.text, f"{response.request.url} did not serve the SPA: {response.text[:200]}"


@then(parsers.parse('the JSON field "{field}" is "{value}"'))
def json_field_is(response, field, value):
    assert response.status_code == 200, f"{response.request.url} answered {response.status_code}: {response.text[:200]}"
    body = response.json()
    assert str(body.get(field)) == value, f"{response.request.url}: {field} is {body.get(field)!r}, expected {value!r} ({body})"


@then("the response comes from the live color")
def from_the_live_color(request, response, live):
    expected = request.config.getoption("target_color") or live.color
    assert expected in COLORS, f"--target-color {expected!r}: use one of {', '.join(COLORS)}"
    got = response.headers.get("x-colorgate-color")
    assert got == expected, f"{response.request.url} was answered by {got!r}, expected {expected!r}"


@given("the stack's containers", target_fixture="ports")
def the_stacks_containers(gate_settings):
    return gates.published_ports(gate_settings)


@then("only the edge publishes host ports")
def only_edge_publishes(ports):
    publishing = {service: p for service, p in ports.items() if p}
    assert set(publishing) == {"edge"}, f"services publishing host ports: {publishing}"


@then(parsers.parse("{service} is attached only to internal networks"))
def only_internal_networks(gate_settings, service):
    networks = gates.service_networks(gate_settings, service)
    assert networks and all(n.internal for n in networks), f"{service} networks: {networks}"


@then(parsers.parse("no connection to port {port:d} succeeds from the host"))
def no_host_connection(gate_settings, port):
    for address in sorted({"127.0.0.1", gate_settings.bind if gate_settings.bind != "0.0.0.0" else "127.0.0.1"}):
        assert not gates.tcp_connects(address, port), f"{address}:{port} accepted a connection from the host"
