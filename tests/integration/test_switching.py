"""Switching without a reload: the edge reads the live color per request,
so clients that never retry lose nothing across switches, streams on the old color
stay open until it is stopped (then closed within the drain bound), writes during a
short freeze are held and passed on, and a routing file that is not valid never
reaches the edge."""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import os
import threading
import time

import pytest

from deploy import edge, profiles, stack
from deploy.colors import other
from deploy.edge import tls
from deploy.errors import CommandError
from deploy.release import releases
from deploy.target import runner

from .conftest import isolated_env, running_stack


@pytest.fixture(scope="module")
def settings(request):
    s = profiles.load("development", environ={**os.environ, **isolated_env("sw")})
    with running_stack(request, s):
        releases.deploy(s, version="v2")  # both colors run: blue v1, green v2 (live)
        yield s


@pytest.fixture(scope="module")
def ca(settings):
    return tls.read_local_ca(settings)


def connect(settings, ca, timeout=10) -> http.client.HTTPSConnection:
    """One keep-alive HTTP/1.1 connection to the edge; the caller never retries on it."""
    return http.client.HTTPSConnection(
        settings.edge_address, settings.https_port, timeout=timeout, context=tls.client_context(ca)
    )


def request(conn, method, path, body=None) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def live(settings):
    return edge.read_active(settings)


def test_a_routing_file_that_is_not_valid_is_refused_before_it_reaches_the_edge(settings, ca):
    before = live(settings)
    for text, why in (
        ("color=red\nversion=v1\n", "the line 'color=red' is not valid there"),
        ('set $cg_color "blue";\n', "is not valid there"),
        ("color=blue\n", "it has no 'version=' line"),
    ):
        with pytest.raises(CommandError) as err:
            edge.in_edge(settings, edge.switch_cmd(text))
        assert err.value.returncode == 3 and why in err.value.stderr
    assert live(settings) == before
    conn = connect(settings, ca)
    status, headers, body = request(conn, "GET", "/api/version")
    assert (
        status == 200 and json.loads(body)["color"] == before.color == headers["x-colorgate-color"]
    )


class NoRetryClients:
    """Threads that each keep one keep-alive connection and send GETs and POSTs
    back to back; any error or unexpected status is a lost request (never retried)."""

    def __init__(self, settings, ca, count=4):
        self.settings, self.ca, self.count = settings, ca, count
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.colors: set[str] = set()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(count)
        ]

    def run(self, i: int) -> None:
        conn = connect(self.settings, self.ca)
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if n % 3 == 0:
                    status, headers, _ = request(
                        conn, "POST", "/api/notes", {"body": f"client {i} #{n}"}
                    )
                    good = status == 201
                else:
                    status, headers, _ = request(conn, "GET", "/api/version")
                    good = status == 200
                with self.lock:
                    if good:
                        self.ok += 1
                        self.colors.add(headers.get("x-colorgate-color", ""))
                    else:
                        self.failed.append(f"{status} on request {n} of client {i}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failed.append(f"{type(exc).__name__}: {exc} on request {n} of client {i}")
                conn.close()
                # a new connection, not a retry of that request
                conn = connect(self.settings, self.ca)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_clients_that_never_retry_lose_nothing_across_switches(settings, ca):
    start = live(settings)
    with NoRetryClients(settings, ca) as clients:
        time.sleep(0.5)
        color = start.color
        versions = {
            start.color: start.version,
            other(start.color): "v1" if start.version == "v2" else "v2",
        }
        for _ in range(10):
            color = other(color)
            edge.write_active(settings, color, versions[color])
            time.sleep(0.3)
    assert clients.failed == [], (
        f"{len(clients.failed)} of {clients.ok + len(clients.failed)} lost: {clients.failed[:5]}"
    )
    assert clients.ok > 100 and clients.colors == {"blue", "green"}
    assert live(settings) == start  # an even number of switches


def test_writes_during_a_short_freeze_are_held_and_go_to_the_color_live_when_it_ends(settings, ca):
    held = dataclasses.replace(settings, hold_seconds=5)
    start = live(settings)
    to = other(start.color)
    versions = {start.color: start.version, to: "v1" if start.version == "v2" else "v2"}
    result: dict = {}

    def post():
        conn = connect(settings, ca)
        began = time.monotonic()
        result["answer"] = request(conn, "POST", "/api/notes", {"body": "held"})
        result["took"] = time.monotonic() - began

    edge.set_frozen(held, True)
    try:
        conn = connect(settings, ca)
        status, headers, _ = request(conn, "GET", "/api/version")  # reads go on
        assert status == 200 and headers["x-colorgate-writes"] == "frozen"
        writer = threading.Thread(target=post)
        writer.start()
        time.sleep(1.0)
        assert "answer" not in result, "the write was not held"
        edge.write_active(settings, to, versions[to])  # the cut-over a db.move makes
    finally:
        edge.set_frozen(held, False)
    writer.join(timeout=10)
    status, headers, _ = result["answer"]
    assert status == 201, status
    assert headers["x-colorgate-color"] == to and int(headers["x-colorgate-held-ms"]) >= 900
    assert 0.9 < result["took"] < 4
    edge.write_active(settings, start.color, start.version)


def test_a_write_still_held_at_the_bound_is_answered_503_with_retry_after(settings, ca):
    edge.set_frozen(dataclasses.replace(settings, hold_seconds=2), True)
    try:
        conn = connect(settings, ca)
        began = time.monotonic()
        status, headers, body = request(conn, "POST", "/api/notes", {"body": "too late"})
        took = time.monotonic() - began
    finally:
        edge.set_frozen(settings, False)
    assert (
        status == 503
        and headers["retry-after"] == "5"
        and "writes are paused" in json.loads(body)["error"]
    )
    assert 1.9 < took < 3.5
    # the edge's own answers carry its security headers too
    assert (
        headers["strict-transport-security"] == "max-age=63072000"
        and headers["x-content-type-options"] == "nosniff"
    )


def test_an_edge_restarted_after_a_switch_serves_the_color_switched_to(settings, ca):
    start = live(settings)
    to = other(start.color)
    versions = {start.color: start.version, to: "v1" if start.version == "v2" else "v2"}
    releases.switch(settings, to, use_gates=False)
    runner.run(["docker", "restart", edge.edge_container(settings)], env=settings.docker_env())
    stack.wait_ready(settings, ["edge"])
    status, headers, body = request(connect(settings, ca), "GET", "/api/version")
    assert status == 200 and json.loads(body) == {"color": to, "version": versions[to]}
    assert headers["x-colorgate-color"] == to and live(settings) == edge.Active(to, versions[to])


def test_a_stream_survives_switches_and_closes_within_the_drain_bound_when_its_color_stops(
    settings, ca
):
    start = live(settings)
    to = other(start.color)
    versions = {start.color: start.version, to: "v1" if start.version == "v2" else "v2"}
    events: list[float] = []
    ended: dict = {}

    def listen():
        conn = connect(settings, ca, timeout=60)
        conn.request("GET", "/api/stream?seconds=600")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("x-colorgate-color") == start.color
        try:
            while line := resp.readline():  # chunked: ends with the stream
                if line.startswith(b"data:"):
                    events.append(time.monotonic())
        except OSError:
            pass
        ended["at"] = time.monotonic()

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    time.sleep(1.5)
    for color in (to, start.color, to):  # three switches; the stream stays on the first color
        edge.write_active(settings, color, versions[color])
        time.sleep(1.0)
    switched_at = time.monotonic()
    time.sleep(1.5)
    assert "at" not in ended, "the stream ended at a switch"
    after = [t for t in events if t > switched_at]
    assert after, "no event after the switches"
    assert max(b - a for a, b in itertools.pairwise(events)) < 2.0  # no gap: one event a second

    drain = 4
    began = time.monotonic()
    stack.stop_color(dataclasses.replace(settings, drain_seconds=drain), start.color, versions)
    reader.join(timeout=30)
    closed = ended["at"] - began
    # the bound, then what is left of it as the containers' grace (at least 1 s), and compose's own start-up
    assert drain - 0.5 < closed < drain + 4, (
        f"the stream closed {closed:.1f}s after the stop began (drain bound {drain}s)"
    )
