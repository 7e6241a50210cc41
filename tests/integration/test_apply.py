"""`invoke apply` on a running stack under steady load: a changed contract (a route more,
the database moved onto a new internal network, a shared service's environment) reaches
the target beside the live color, which keeps answering; the release after it starts only
its candidate. A network whose options changed is refused before anything changes."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from deploy import contract, edge, errors, profiles, stack
from deploy.colors import other
from deploy.data import db
from deploy.edge import tls
from deploy.release import gates
from deploy.target import facts, runner, sockets

from .conftest import invoke, isolated_env, running_stack
from .test_switching import connect, request


@pytest.fixture(scope="module")
def env():
    return isolated_env("ap")


@pytest.fixture(scope="module")
def settings(request, env):
    s = profiles.load("development", environ={**os.environ, **env})
    with running_stack(request, s):
        yield s


class SteadyClients:
    """Readers sending GETs of an answer that needs no database back to back on keep-alive
    connections (none may fail), and one writer posting notes (each write it was told was
    stored is checked afterwards; none may be refused).
    A reader retries a GET only as browsers and HTTP libraries do (RFC 9112 9.3.1): once,
    on a new connection, when the edge closed an idle keep-alive one without answering,
    as nginx's graceful reload does; those are counted too."""

    def __init__(self, settings, readers=3):
        self.settings, self.ca = settings, tls.read_local_ca(settings)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.reads, self.read_failures, self.closed_idle = 0, [], 0
        self.stored, self.refused = [], 0
        self.threads = [threading.Thread(target=self.read, daemon=True) for _ in range(readers)]
        self.threads.append(threading.Thread(target=self.write, daemon=True))

    def read(self) -> None:
        conn = connect(self.settings, self.ca)
        while not self.stop.is_set():
            try:
                try:
                    status, _, _ = request(conn, "GET", "/api/version")
                except http.client.RemoteDisconnected:
                    with self.lock:
                        self.closed_idle += 1
                    conn.close()
                    conn = connect(self.settings, self.ca)
                    status, _, _ = request(conn, "GET", "/api/version")
                with self.lock:
                    self.reads += 1
                    if status != 200:
                        self.read_failures.append(status)
            except OSError as exc:
                with self.lock:
                    self.read_failures.append(repr(exc))
                conn.close()
                conn = connect(self.settings, self.ca)

    def write(self) -> None:
        conn, n = connect(self.settings, self.ca), 0
        while not self.stop.is_set():
            n += 1
            try:
                status, _, body = request(conn, "POST", "/api/notes", {"body": f"steady #{n}"})
            except OSError:
                status, body = 0, b""
                conn.close()
                conn = connect(self.settings, self.ca)
            with self.lock:
                if status == 201:
                    self.stored.append(json.loads(body)["id"])
                else:
                    self.refused += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def edited(tmp_path: Path, settings, edit) -> dict[str, str]:
    """COLORGATE_APP for a copy of the examples whose app's compose file `edit` changed."""
    root = tmp_path / "examples"
    shutil.copytree(settings.app_dir.parent, root)  # its PostgreSQL builds from ../
    path = root / settings.app_dir.name / "docker-compose.yml"
    data = contract.read_compose(path)
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return {"COLORGATE_APP": str(path.parent)}


def moved_database(data: dict) -> None:
    data["x-colorgate"]["routes"].insert(0, {"path": "/docs/", "to": "frontend:8080"})
    data["networks"]["store"] = {"internal": True}
    data["services"]["backend"]["networks"] = ["web", "store"]
    data["services"]["postgres"]["networks"] = ["store"]
    data["services"]["postgres"]["environment"]["TZ"] = "UTC"


def ids(settings, names) -> dict[str, str]:
    return {name: facts.inspect(settings, facts.container(settings, name))["Id"] for name in names}


def test_a_changed_network_option_is_refused_before_anything_changes(settings, env, tmp_path):
    def internal_web(data):
        data["networks"]["web"] = {"internal": True}

    live = edge.read_active(settings)
    before = ids(settings, ("edge", "postgres", *settings.app.color_services(live.color)))
    proc = invoke("apply", env={**env, **edited(tmp_path, settings, internal_web)})
    assert proc.returncode == errors.BAD_INPUT, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "colorgate: the options of the network web changed: Docker cannot change a network in place, and making it again "
        "would cut the live color off it: give the changed network a new name in the compose file (a new network is "
        "attached to the running containers first)"
    )
    assert ids(settings, before) == before and edge.read_active(settings) == live


def test_apply_moves_the_database_onto_a_new_network_and_adds_a_route_while_the_live_color_answers(
    settings, env, tmp_path
):
    changed = {**env, **edited(tmp_path, settings, moved_database)}
    live = edge.read_active(settings)
    copies = settings.app.color_services(live.color)
    before = ids(settings, ("edge", *copies))
    backups = len(db.list_backups(settings))

    plan = invoke("apply", "--plan", env=changed)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == ["-- the edge's routes: reloaded", "-- postgres: recreated"]

    with SteadyClients(settings) as clients:
        proc = invoke("apply", env=changed)
    assert proc.returncode == 0, proc.stderr
    print(
        f"\n  apply: {clients.reads} reads, {len(clients.read_failures)} failed, {clients.closed_idle} on idle connections the "
        f"reload closed; {len(clients.stored)} writes stored, "
        f"{clients.refused} refused"
    )
    assert clients.read_failures == [] and clients.reads > 50, clients.read_failures[:5]
    assert clients.refused == 0  # held at the edge while the database restarted, then passed on
    held = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.startswith("ok requests pass again: held for")
    ]
    assert held, proc.stderr
    print(f"  {held[0]}")
    assert "backing up the database before postgres is recreated" in proc.stdout + proc.stderr
    # the live color was attached, not recreated, and the edge reloaded, not restarted
    assert ids(settings, before) == before and edge.read_active(settings) == live
    assert {n.name for n in sockets.service_networks(settings, "postgres")} == {
        f"{settings.project}_store"
    }
    assert f"{settings.project}_store" in {
        n.name
        for n in sockets.service_networks(settings, settings.app.copy_name("backend", live.color))
    }
    assert len(db.list_backups(settings)) == backups + 1
    stored = {n["id"] for n in gates_get(settings, "/api/notes").json()}
    assert set(clients.stored) <= stored  # every write acknowledged is there
    assert gates_get(settings, "/docs/").status_code == 200

    again = invoke("apply", "--plan", env=changed)
    assert (
        again.stdout.strip()
        == "nothing to apply: what runs beside the colors is what the contract and the settings say"
    )
    # the next release starts its candidate on the new network; its gates pass
    deploy = invoke("deploy", env=changed)
    assert deploy.returncode == 0, deploy.stderr
    assert edge.read_active(settings).color != live.color
    gates_get(settings, "/api/health").raise_for_status()


def gates_get(settings, path):
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        return c.get(path)


def test_a_hold_an_apply_that_died_left_at_the_edge_is_ended_by_the_next_apply(
    settings, env, tmp_path
):
    """Killed while the database restarted, an apply leaves the edge holding its clients'
    requests (each then 503): the next apply ends that first, and says so."""
    # each request held 2 s at most
    edge.set_frozen(dataclasses.replace(settings, health_timeout=2), True, database=True)
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        assert c.get("/api/version", timeout=15).status_code == 503  # held, then refused
    proc = invoke("apply", env={**env, **edited(tmp_path, settings, moved_database)})
    assert proc.returncode == 0, proc.stderr
    assert (
        "!! writes were frozen at the edge with no db.move, db.restore or apply running (one died): writes open again"
        in proc.stderr
    )
    assert gates_get(settings, "/api/version").status_code == 200


class OneAddress:
    """GETs from this one address at `rate` a second (paced, on one keep-alive connection
    per thread), counting the edge's 429s: a client over the per-client limit."""

    def __init__(self, settings, rate: float, threads: int = 4):
        self.settings, self.ca, self.rate, self.stop = (
            settings,
            tls.read_local_ca(settings),
            rate,
            threading.Event(),
        )
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self.send, daemon=True) for _ in range(threads)]

    def send(self) -> None:
        conn, every = connect(self.settings, self.ca), len(self.threads) / self.rate
        due = time.monotonic()
        while not self.stop.is_set():
            try:
                status, _, _ = request(conn, "GET", "/api/version")
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = connect(self.settings, self.ca)
            self.statuses.append(status)
            due += every
            time.sleep(max(0.0, due - time.monotonic()))

    def __enter__(self):
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        self.achieved = len(self.statuses) / (time.monotonic() - self.started)


def test_gated_switches_pass_while_one_address_sends_three_times_the_per_client_limit(
    settings, env, tmp_path
):
    """The gates carry the edge's token, which no per-client limit counts: a client that
    exhausts its address's limit (the gates' address too) cannot make a release fail."""
    limited = {
        **env,
        **edited(tmp_path, settings, moved_database),
        "COLORGATE_RATE_LIMIT": "20",
        "COLORGATE_RATE_BURST": "10",
    }
    applied = invoke("apply", env=limited)  # the edge is recreated with the lower limit
    assert applied.returncode == 0, applied.stderr
    with OneAddress(settings, rate=60) as load:
        for _ in range(2):
            switched = invoke(
                "switch", "--to", other(edge.read_active(settings).color), env=limited
            )
            assert switched.returncode == 0, switched.stderr
            assert "post gates" in switched.stderr
    assert load.achieved >= 0.9 * 60, (
        f"the client kept only {load.achieved:.0f} of 60 requests a second"
    )
    assert load.statuses.count(429) > len(load.statuses) / 2, load.statuses[
        -20:
    ]  # over the limit throughout
    print(
        f"\n  {len(load.statuses)} GETs at {load.achieved:.0f}/s from one address (limit 20/s): "
        f"{load.statuses.count(429)} answered 429; 2 gated switches passed"
    )


def test_down_removes_the_networks_an_earlier_contract_named_too(settings):
    """After the move above, the running contract names `store`; this one (the test's
    settings) still names `data`: down removes both, and nothing of the project is left."""
    stack.down(settings)
    left = runner.run(
        [
            "docker",
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            f"label=com.docker.compose.project={settings.project}",
        ],
        env=settings.docker_env(),
    ).stdout.split()
    assert left == []
