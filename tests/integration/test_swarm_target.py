"""The Swarm target: the same commands, gates and releases against the
manager of a test Swarm of two engines, whose nodes pull the images from a registry.
The static site runs there with 3 tasks per color spread over both nodes; its edge
gets a certificate from a test ACME CA; the PostgreSQL app loses a worker under writes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from deploy import bases, config, edge, errors, profiles
from deploy.edge import tls
from deploy.release import gates
from deploy.target import connections, facts, runner, sockets, swarmstack
from deploy.target import swarm as swarm_target

from .conftest import INVOKE, invoke, isolated_env, pebble_server, remove_stack
from .swarm import IN_THE_CLEAR, swarm


def test_an_engine_that_is_no_swarm_manager_is_one_line():
    proc = invoke(
        "status",
        env={
            **isolated_env("swn"),
            "COLORGATE_APP": "examples/static-site",
            "COLORGATE_TARGET": "swarm",
        },
    )
    assert proc.returncode == errors.BAD_INPUT and proc.stderr.strip().splitlines() == [
        "colorgate: the engine at this machine is not a Swarm manager: run `docker swarm init` there (and join the other nodes), "
        "or set COLORGATE_TARGET=compose"
    ], proc.stderr


@pytest.fixture(scope="module")
def cluster():
    settings = profiles.load("development", environ=dict(os.environ))
    with swarm(settings, size=2, registry=True) as made:
        yield made


@pytest.fixture(scope="module")
def registry(cluster):
    """The static site's images v1 and v2, built on this machine and pushed, as CI would
    (their tags here removed afterwards)."""
    run = isolated_env("swp")
    path = f"{cluster.registry}/{run['COLORGATE_PROJECT']}"
    here = {**run, "COLORGATE_APP": "examples/static-site", "COLORGATE_REGISTRY": path}
    built = profiles.load("development", environ={**os.environ, **here})
    bases.build_bases(
        built, [bases.BASES["nginx"], bases.BASES["postgres"], bases.BASES["certbot"]]
    )
    try:
        for version in ("v1", "v2"):
            pushed = invoke("images.push", "--version", version, env=here)
            assert pushed.returncode == 0, pushed.stderr
        yield path
    finally:
        remove_stack(built)


def swarm_env(cluster, registry: str, tag: str) -> dict[str, str]:
    return {
        **isolated_env(tag),
        **IN_THE_CLEAR,
        "COLORGATE_APP": "examples/static-site",
        "COLORGATE_TARGET": "swarm",
        "COLORGATE_DOCKER_HOST": cluster.docker_host,
        "COLORGATE_BIND": cluster.address,
        "COLORGATE_REGISTRY": registry,
    }


def answers(settings, n: int = 24) -> list:
    ca = tls.read_local_ca(settings)
    with gates.edge_client(
        settings, ca, gate=True
    ) as client:  # the gates are told which task answered
        return [client.get("/status.txt") for _ in range(n)]


def test_up_scale_a_gated_deploy_a_rollback_and_the_features_on_a_swarm(cluster, registry):
    env = swarm_env(cluster, registry, "swt")
    settings = profiles.load("development", environ={**os.environ, **env})

    # images built on one engine exist only there: a two-node Swarm needs the registry
    refused = invoke("up", env={**env, "COLORGATE_REGISTRY": ""})
    assert refused.returncode == errors.BAD_INPUT
    assert refused.stderr.strip().splitlines()[-1] == (
        "colorgate: this Swarm has 2 nodes, which pull their images from a registry: set COLORGATE_REGISTRY "
        "(and push with `invoke images.push`); images built on one engine exist only there"
    ), refused.stderr
    assert not swarm_target.services(settings)
    try:
        up = invoke("up", "--version", "v1", env=env)
        assert up.returncode == 0, up.stderr
        assert edge.read_active(settings).color == "blue"
        scaled = invoke("scale", "site=3", env=env)
        assert scaled.returncode == 0, scaled.stderr
        running = swarm_target.services(settings)
        assert (
            running["site_blue"].running == 3
            and len(set(running["site_blue"].addresses.values())) == 2
        ), running["site_blue"]
        assert running["site_green"].replicas == 0

        deployed = invoke("deploy", "--version", "v2", env=env)
        assert deployed.returncode == 0, deployed.stderr
        assert (
            "pre gates on green (v2)" in deployed.stderr
            and "post gates on green (v2)" in deployed.stderr
        )
        green = swarm_target.services(settings)["site_green"]
        # as many as the live color, both nodes
        assert green.running == 3 and len(set(green.addresses.values())) == 2, green
        served = answers(settings)
        assert all(
            r.status_code == 200 and r.headers["x-colorgate-color"] == "green" for r in served
        ), [r.status_code for r in served]
        upstreams = {r.headers["x-colorgate-upstream"].rsplit(":", 1)[0] for r in served}
        # every task answered
        assert len(upstreams) == 3 and upstreams <= set(green.addresses), upstreams
        assert len({green.addresses[a] for a in upstreams}) == 2  # from both nodes
        states = facts.service_states(settings)
        assert states["site_green"].version == "v2" and states["site_blue"].version == "v1"

        status = invoke("status", env=env)
        assert status.returncode == 0 and "green" in status.stdout, status.stdout

        back = invoke("rollback", env=env)
        assert back.returncode == 0, back.stderr
        assert edge.read_active(settings).color == "blue"
        assert all(r.headers["x-colorgate-color"] == "blue" for r in answers(settings, 6))

        features = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "features/"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=config.project_root(),
        )
        assert features.returncode == 0, features.stdout[-3000:]
        # docker service logs: the edge's request log
        logs = invoke("logs", "edge", "--tail", "300", env=env)
        assert logs.returncode == 0 and "/status.txt" in logs.stdout, logs.stdout[-1000:]
        history = invoke("history", "--json", env=env)
        assert [r["action"] for r in __import__("json").loads(history.stdout)][-3:] == [
            "scale",
            "deploy",
            "rollback",
        ]
    finally:
        down = invoke("down", "--volumes", env=env)
        assert down.returncode == 0, down.stderr
        assert not swarm_target.services(settings)


class Load:
    """GET /status.txt through the edge at a steady rate, in a thread: what each got,
    as (arrived, status, what `one` keeps of it, seconds)."""

    def __init__(self, settings, rate: float = 40):
        self.settings, self.rate, self.seen, self.stop = settings, rate, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self, client, n: int):
        """The n-th request: its response and what to keep of it (here: the color)."""
        r = client.get("/status.txt")
        return r, r.headers.get("x-colorgate-color", "")

    def run(self):
        with gates.edge_client(self.settings, tls.read_local_ca(self.settings)) as client:
            n = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    r, kept = self.one(client, n)
                    self.seen.append(
                        (time.monotonic(), r.status_code, kept, r.elapsed.total_seconds())
                    )
                except Exception as exc:  # noqa: BLE001 - counted as a failed request
                    self.seen.append((time.monotonic(), 0, repr(exc), 0.0))
                n += 1
                time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    ok = 200

    def failed(self, since: float = 0) -> list:
        return [s for s in self.seen if s[0] >= since and s[1] != self.ok]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_switches_under_load_lose_no_request(cluster, registry):
    env = {**swarm_env(cluster, registry, "swl"), "COLORGATE_ANALYSIS_INTERVALS": "0"}
    settings = profiles.load("development", environ={**os.environ, **env})
    try:
        assert invoke("up", "--version", "v1", env=env).returncode == 0
        assert invoke("scale", "site=3", env=env).returncode == 0
        with Load(settings) as load:
            time.sleep(1)
            deployed = invoke("deploy", "--version", "v2", env=env)
            assert deployed.returncode == 0, deployed.stderr
            for color in ("blue", "green", "blue", "green"):
                switched = invoke("switch", "--to", color, env=env)
                assert switched.returncode == 0, switched.stderr
            time.sleep(1)
        assert not load.failed() and len(load.seen) > 100, load.failed()[:5]
        assert {s[2] for s in load.seen} == {"blue", "green"}
        print(f"\nswarm: {len(load.seen)} requests across a deploy and 4 switches, 0 failed")

    finally:
        invoke("down", "--volumes", env=env)


class NewUsers(Load):
    """GET /status.txt at a steady rate, each request from a user the edge has not seen
    (no canary cookie): a canary's share of them lands on the canary."""

    def one(self, client, n: int):
        client.cookies.clear()
        return super().one(client, n)


def test_a_canary_deploy_on_a_swarm_sends_its_share_of_users_to_the_candidate_then_everyone(
    cluster, registry
):
    env = {
        **swarm_env(cluster, registry, "swc"),
        "COLORGATE_ANALYSIS_INTERVALS": "1",
        "COLORGATE_ANALYSIS_SECONDS": "3",
        "COLORGATE_ANALYSIS_MIN_REQUESTS": "1",
    }
    settings = profiles.load("development", environ={**os.environ, **env})
    try:
        assert invoke("up", "--version", "v1", env=env).returncode == 0
        with NewUsers(settings, rate=20) as load:
            deployed = invoke("deploy", "--version", "v2", "--canary", "50", env=env)
            time.sleep(1)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        last = edge.read_history(settings)[-1]
        assert last["outcome"] == "switched" and [
            (s["percent"], s["verdict"]) for s in last["analysis"]["canary"]
        ] == [(50, "passed")], last
        assert not load.failed() and {s[2] for s in load.seen} == {"blue", "green"}, load.failed()[
            :5
        ]
        assert edge.read_active(settings).color == "green" and {s[2] for s in load.seen[-5:]} == {
            "green"
        }
    finally:
        invoke("down", "--volumes", env=env)


ACME_DOMAIN = "colorgate-swarm.example"


def test_tls_init_gets_the_edge_a_certificate_from_an_acme_ca_and_renew_renews_it_on_a_swarm(
    cluster, registry, tmp_path
):
    """certbot runs as a one-off on the manager, with the edge's volumes (its webroot and
    certificates) there; the test CA (pebble, on this machine's loopback, reached from
    the manager's) fetches the HTTP-01 challenge from the edge on the manager."""
    env = {**swarm_env(cluster, registry, "swa"), "COLORGATE_DOMAIN": ACME_DOMAIN}
    settings = profiles.load("development", environ={**os.environ, **env})
    with pebble_server(tmp_path, settings.http_port, validity_days=20) as pebble:
        cluster.reach_loopback(pebble["port"])
        cluster.publish_here(settings.http_port)
        try:
            assert invoke("up", "--version", "v1", env=env).returncode == 0
            got = invoke(
                "tls.init",
                "--email",
                f"ops@{ACME_DOMAIN}",
                "--directory",
                pebble["directory"],
                "--ca-bundle",
                str(pebble["endpoint_ca"]),
                env=env,
            )
            assert got.returncode == 0, got.stderr[-3000:]
            first = tls.status(settings)
            assert (
                first["source"] == "ACME"
                and "Pebble" in first["issuer"]
                and first["sans"] == [ACME_DOMAIN]
            ), first
            renewed = invoke("tls.renew", env=env)  # 20 days left: inside certbot's window
            assert renewed.returncode == 0, renewed.stderr[-3000:]
            assert tls.status(settings)["serial"] != first["serial"]
            served = gates.tls_handshake(
                settings.edge_address, settings.https_port, ACME_DOMAIN, pebble["root"].read_text()
            )
            assert served.ok, served.error
        finally:
            down = invoke("down", "--volumes", env=env)
            assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def db_registry(cluster):
    run = isolated_env("swq")
    path = f"{cluster.registry}/{run['COLORGATE_PROJECT']}"
    here = {**run, **DB_APP, "COLORGATE_REGISTRY": path}
    built = profiles.load("development", environ={**os.environ, **here})
    bases.build_bases(built, bases.needed_bases(built))
    try:
        for version in ("v1", "v2", "v3"):
            pushed = invoke("images.push", "--version", version, env=here)
            assert pushed.returncode == 0, pushed.stderr
        yield path
    finally:
        remove_stack(built)  # the tags made here


DB_APP = {
    "COLORGATE_APP": "examples/spa-api-postgres",
    "POSTGRES_DB": "app",
    "POSTGRES_USER": "app",
    "POSTGRES_PASSWORD": "swarm-db-password-1234",
}


class Writes(Load):
    """POST /api/notes at a steady rate: the ids the app acknowledged (201)."""

    ok = 201

    def one(self, client, n: int):
        r = client.post("/api/notes", json={"body": f"swarm note {n}"})
        return r, r.json()["id"] if r.status_code == 201 else r.text[:100]


def test_an_app_with_its_database_on_a_swarm_keeps_every_acknowledged_write_when_a_worker_goes(
    cluster, db_registry
):
    """Runs last in this module: it stops a node of the module's Swarm. The database is
    on the manager with its volume; its password and each color's database URL are
    Swarm secrets; migrations, backups, their verification and a restore are one-off
    containers on the manager, on the stack's overlay networks. The gate on the
    database port asks every node. The worker goes while a release starts its
    candidate: that release either converges on the node left or fails, with traffic
    where it was; the live color rides it out."""
    env = {**swarm_env(cluster, db_registry, "swd"), **DB_APP}
    settings = profiles.load("development", environ={**os.environ, **env})
    try:
        up = invoke("up", "--version", "v1", env=env)
        assert up.returncode == 0, up.stderr
        assert invoke("scale", "backend=3", env=env).returncode == 0
        with Writes(settings, rate=20) as writes:
            deployed = invoke("deploy", "--version", "v2", env=env)
            assert deployed.returncode == 0, deployed.stderr
            assert "post gates on green (v2)" in deployed.stderr
            # one-off tools on the manager, on the stack's networks
            backed_up = invoke("db.backup", env=env)
            assert backed_up.returncode == 0, backed_up.stderr
            backup = re.search(r"^backup (\S+):", backed_up.stdout, re.MULTILINE).group(1)
            verified = invoke("db.verify", backup, env=env)
            assert verified.returncode == 0, verified.stderr
            features = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "features/"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=600,
                cwd=config.project_root(),
            )
            assert features.returncode == 0, features.stdout[-3000:]
            green = swarm_target.services(settings)["backend_green"]
            assert green.running == 3 and len(set(green.addresses.values())) == 2, green
            # `logs all --follow`: every service's log side by side (not the first one's only), until interrupted
            follow = subprocess.Popen(
                [INVOKE, "logs", "all", "--follow", "--tail", "20"],
                env={**os.environ, **env},
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=config.project_root(),
                start_new_session=True,
            )
            time.sleep(8)
            os.killpg(follow.pid, signal.SIGINT)
            followed = follow.communicate(timeout=30)[0]
            assert "colorgate sample api: color=green" in followed and "/api/notes" in followed, (
                followed[-2000:]
            )
            worker = swarm_target.node_addresses(swarm_target.nodes(settings))["node2"]
            # anything on a worker that answers on the database port fails the gate, which asks every node
            runner.run(
                [
                    "docker",
                    "exec",
                    "--detach",
                    cluster.nodes[1],
                    "socat",
                    "TCP-LISTEN:5432,fork,reuseaddr",
                    "SYSTEM:true",
                ]
            )
            try:
                while not sockets.tcp_connects(worker, 5432, timeout=0.5):
                    time.sleep(0.1)
                caught = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pytest",
                        "-q",
                        "-p",
                        "no:cacheprovider",
                        "features/",
                        "-k",
                        "answers_on_the_database_port",
                    ],
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    timeout=300,
                    cwd=config.project_root(),
                )
                assert (
                    caught.returncode == 1
                    and f"{worker}:5432 accepted a connection" in caught.stdout
                ), caught.stdout[-2000:]
            finally:
                runner.run(
                    ["docker", "exec", cluster.nodes[1], "pkill", "-f", "TCP-LISTEN:5432"],
                    check=False,
                )
            # a worker goes, with its tasks of the live color, while the next release starts its candidate there: the
            # candidate converges on the node left and passes its gates, or fails them with traffic where it was
            release = subprocess.Popen(
                [INVOKE, "deploy", "--version", "v3"],
                env={**os.environ, **env},
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=config.project_root(),
            )
            deadline = time.monotonic() + 180
            while (
                release.poll() is None
                and swarm_target.services(settings)["backend_blue"].replicas == 0
            ):
                assert time.monotonic() < deadline, (
                    "the release did not start its candidate within 180 s"
                )
                time.sleep(0.2)
            lost_at = time.monotonic()
            runner.run(["docker", "stop", "--time", "1", cluster.nodes[1]])
            released = release.communicate(timeout=600)[1]
            took = time.monotonic() - lost_at
            time.sleep(max(0.0, lost_at + 20 - time.monotonic()))
        live = edge.read_active(settings)
        assert (live.color, live.version) == (
            ("blue", "v3") if release.returncode == 0 else ("green", "v2")
        ), released[-3000:]
        # a node lost while the Swarm starts the candidate ends that wait at once, not at its 120 s bound
        assert "waiting for the Swarm to run" not in released, released[-3000:]
        acknowledged = {s[2] for s in writes.seen if s[1] == 201}
        after = [s for s in writes.seen if s[0] >= lost_at]
        assert not [s for s in writes.failed() if s[0] < lost_at], writes.failed()[
            :5
        ]  # the deploy, gates and backup: none
        # a write in flight to a task on the worker when it went gets a 502 or no answer (never acknowledged:
        # nginx does not send a POST again); every later one is answered
        in_flight = writes.failed(lost_at)
        assert len(in_flight) <= 3 and all(s[0] < lost_at + 11 for s in in_flight), in_flight
        assert len(after) > 100 and not [s for s in after if s[0] > lost_at + 11 and s[1] != 201]
        with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
            stored = {note["id"] for note in client.get("/api/notes").json()}
        assert acknowledged <= stored and len(acknowledged) > 300, len(acknowledged - stored)
        # the database tasks that change it: one-off containers on the manager, as db.backup's
        assert invoke("db.migrate", env=env).stdout.strip() == "at head"
        # the backup taken mid-load: the notes written since go
        restored = invoke("db.restore", backup, env=env)
        assert restored.returncode == 0, restored.stderr
        with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
            kept = {note["id"] for note in client.get("/api/notes").json()}
        assert kept < stored and len(kept) > 10, (len(kept), len(stored))
        secrets = connections.engine(
            settings.docker_host,
            "secrets",
            filters={"label": f"com.docker.stack.namespace={settings.project}"},
        )
        assert len(secrets) >= 3  # the password, each color's URL
        assert (
            settings.postgres_password
            and not any(  # named by a salted digest: not the value's plain one
                s["Spec"]["Name"]
                == swarmstack.secret_name(
                    settings.project, "secrets-db", "postgres_password", settings.postgres_password
                )
                for s in secrets
            )
        )
        print(
            f"\nswarm with its database: {len(acknowledged)} writes acknowledged, all stored; {len(after)} after a worker "
            f"stopped, {len(in_flight)} in flight to it failed unacknowledged, the slowest answer {max(s[3] for s in after):.2f}s; "
            f"the release under way {'switched to' if release.returncode == 0 else 'failed, traffic stayed on'} {live.color} "
            f"{took:.0f} s after the worker stopped "
            f"({released.strip().splitlines()[-1][:300]})"
        )
    finally:
        down = invoke("down", "--volumes", env=env)
        assert down.returncode == 0, down.stderr
    assert not connections.engine(
        settings.docker_host,
        "secrets",
        filters={"label": f"com.docker.stack.namespace={settings.project}"},
    )
    assert not connections.engine(
        settings.docker_host,
        "configs",
        filters={"label": f"com.docker.stack.namespace={settings.project}"},
    )
    assert not connections.engine(
        settings.docker_host,
        "volumes",
        filters={"label": f"com.docker.compose.project={settings.project}"},
    ).get("Volumes")
