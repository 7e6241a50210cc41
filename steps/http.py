"""The step library's HTTP steps, for an app's own gates: requests with any method, a
JSON or form body, headers, basic or bearer auth whose secrets come from the settings
(COLORGATE_GATE_*: masked in output and reports), values saved from one answer and used
in later steps as ${name}, and assertions on the answer (JSON paths such as
`entries[0].title`). Through the public edge: a @post scenario's `Given the public edge`.

    Given the public edge
    And I log in with basic auth as "admin" and the password in COLORGATE_GATE_ADMIN_PASSWORD
    When I send POST "/v1/feeds" with the JSON body
      '''
      {"feed_url": "https://example.org/feed.xml", "category_id": 1}
      '''
    Then the status is 201
    And I save the JSON field "feed_id" as "feed"
    When I send GET "/v1/feeds/${feed}"
    Then the JSON field "id" is "${feed}"
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

import httpx
import pytest
from pytest_bdd import given, parsers, then, when

METHODS = "GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS"
SAVED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]|\[([^=\]]+)=([^\]]*)\]")


@dataclass
class Http:
    """One scenario's requests: its headers and auth, and the values it saved (`run`: a
    value of its own, for names that must be new each time the gates run)."""

    headers: dict[str, str] = field(default_factory=dict)
    auth: httpx.Auth | None = None
    saved: dict[str, str] = field(default_factory=lambda: {"run": secrets.token_hex(4)})

    def fill(self, text: str) -> str:
        """`text` with each ${name} replaced by the value saved as `name`."""

        def value(match: re.Match) -> str:
            if match[1] not in self.saved:
                raise AssertionError(
                    f'no value saved as {match[1]!r}: save one first (`And I save the JSON field "id" as '
                    f'"{match[1]}"`); saved: {sorted(self.saved) or "none"}'
                )
            return self.saved[match[1]]

        return SAVED.sub(value, text)


@pytest.fixture
def http() -> Http:
    return Http()


def show(response) -> str:
    url = getattr(response, "url", None) or response.request.url
    return f"{url} answered {response.status_code}: {response.text[:200]!r}"


def json_path(body, path: str):
    """The value at `path` (`a.b`, `items[0].id`, `0.name`, `[title=News].id`: the first
    item whose title is News) of a JSON body; KeyError if absent."""
    value = body
    for name, index, where, equals in PATH_PART.findall(path):
        if where:  # [field=value]: the first item of a list whose field is that value
            found = (
                [
                    item
                    for item in value
                    if isinstance(item, dict) and _text(item.get(where)) == equals
                ]
                if isinstance(value, list)
                else []
            )
            if not found:
                raise KeyError(path)
            value = found[0]
            continue
        key = (
            int(index)
            if index
            else (int(name) if name.lstrip("-").isdigit() and isinstance(value, list) else name)
        )
        if isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise KeyError(path)
    return value


def _field(response, path: str):
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"not JSON: {show(response)}") from None
    try:
        return json_path(body, path)
    except (KeyError, TypeError):
        raise AssertionError(f"the JSON field {path!r} is absent: {show(response)}") from None


def _text(value) -> str:
    """A JSON value as a step writes it: true/false, numbers, strings as they are."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _secret(gate_settings, key: str) -> str:
    value = gate_settings.gate_secrets.get(key)
    if not key.startswith("COLORGATE_GATE_"):
        raise AssertionError(
            f"{key}: a gate's secret is a setting named COLORGATE_GATE_... (in .env.<profile>.local)"
        )
    if not value:
        raise AssertionError(
            f"{key} is not set: put it in .env.{gate_settings.profile}.local or the environment"
        )
    return value


# --- given: how the scenario's requests are sent ------------------------------------


@given(parsers.parse('I log in with basic auth as "{user}" and the password in {key}'))
def basic_auth(http, gate_settings, user, key):
    http.auth = httpx.BasicAuth(user, _secret(gate_settings, key))


@given(parsers.parse("I send the bearer token in {key}"))
def bearer_token(http, gate_settings, key):
    http.headers["Authorization"] = f"Bearer {_secret(gate_settings, key)}"


@given(
    parsers.re(
        r'I send the header "(?P<name>[^"]+)" with the value in (?P<key>COLORGATE_GATE_\w+)$'
    )
)
def secret_header(http, gate_settings, name, key):
    http.headers[name] = _secret(gate_settings, key)


@given(parsers.parse('I send the header "{name}" as "{value}"'))
def plain_header(http, name, value):
    http.headers[name] = http.fill(value)


# --- when: requests -----------------------------------------------------------------


def _send(
    client, http: Http, method: str, path: str, content: bytes | None = None, content_type: str = ""
):
    headers = {**http.headers, **({"Content-Type": content_type} if content_type else {})}
    return client.request(
        method,
        http.fill(path),
        headers=headers,
        content=content,
        auth=http.auth or httpx.USE_CLIENT_DEFAULT,
    )


@when(parsers.parse('I request "{path}" over HTTPS'), target_fixture="response")
def request_over_https(client, http, path):
    return _send(client, http, "GET", path)


@when(parsers.re(rf'I send (?P<method>{METHODS}) "(?P<path>[^"]*)"$'), target_fixture="response")
def send(client, http, method, path):
    return _send(client, http, method, path)


@when(
    parsers.re(rf'I send (?P<method>{METHODS}) "(?P<path>[^"]*)" with the JSON body$'),
    target_fixture="response",
)
def send_json(client, http, method, path, docstring):
    text = http.fill(docstring)
    try:
        json.loads(text)
    except ValueError as exc:
        raise AssertionError(f"the step's JSON body is not JSON ({exc}): {text[:200]!r}") from None
    return _send(client, http, method, path, text.encode(), "application/json")


@when(
    parsers.re(
        rf'I send (?P<method>{METHODS}) "(?P<path>[^"]*)" with the form body "(?P<body>[^"]*)"$'
    ),
    target_fixture="response",
)
def send_form(client, http, method, path, body):
    return _send(
        client, http, method, path, http.fill(body).encode(), "application/x-www-form-urlencoded"
    )


@when(parsers.parse('I save the JSON field "{path}" as "{name}"'))
@then(parsers.parse('I save the JSON field "{path}" as "{name}"'))
def save_field(response, http, path, name):
    http.saved[name] = _text(_field(response, http.fill(path)))


# --- then: the answer -----------------------------------------------------------------


@then(parsers.parse("the status is {code:d}"))
def status_is(response, code):
    assert response.status_code == code, show(response)


@then(parsers.parse('the JSON field "{path}" is "{value}"'))
def json_field_is(response, http, path, value):
    got, value = _text(_field(response, http.fill(path))), http.fill(value)
    assert got == value, f"{path} is {got!r}, expected {value!r}: {show(response)}"


@then(parsers.parse('the JSON field "{path}" contains "{value}"'))
def json_field_contains(response, http, path, value):
    got, value = _field(response, http.fill(path)), http.fill(value)
    found = (
        any(_text(item) == value for item in got) if isinstance(got, list) else value in _text(got)
    )
    assert found, f"{path} is {got!r}: {value!r} is not in it: {show(response)}"


@then(parsers.parse('the JSON field "{path}" is present'))
def json_field_present(response, http, path):
    _field(response, http.fill(path))


@then(parsers.parse('the body contains "{text}"'))
def body_contains(response, http, text):
    text = http.fill(text)
    assert text in response.text, f"the body does not contain {text!r}: {show(response)}"


@then(parsers.parse('the header "{name}" is "{value}"'))
def header_is(response, name, value):
    got = response.headers.get(name.lower())
    assert got == value, f"header {name} is {got!r}, expected {value!r}: {show(response)}"


@then(parsers.parse("the response time is below {ms:d} ms"))
def faster_than(response, ms):
    elapsed = getattr(response, "elapsed", None)
    assert elapsed is not None, (
        "this response has no timing: ask through the public edge (`When I request ... over HTTPS`)"
    )
    took = elapsed.total_seconds() * 1000
    assert took < ms, f"took {took:.0f} ms (limit {ms} ms): {show(response)}"
