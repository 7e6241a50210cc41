"""The Swarm target (issue #15): the same commands, gates and releases against the
manager of a test Swarm of two engines, whose nodes pull the images from a registry.
The static site runs there with 3 tasks per color spread over both nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from deploy import config, edge, facts, gates, images, runner, swarm as swarm_target, tls

from .conftest import invoke, isolated_env
from .swarm import swarm


@pytest.fixture(scope="module")
def cluster():
    settings = config.load("development", environ=dict(os.environ))
    with swarm(settings, size=2, registry=True) as made:
        yield made


@pytest.fixture(scope="module")
def registry(cluster) -> str:
    """The static site's images v1 and v2, built on this machine and pushed, as CI would."""
    run = isolated_env("swp")
    path = f"{cluster.registry}/{run['COLORGATE_PROJECT']}"
    here = {**run, "COLORGATE_APP": "examples/static-site", "COLORGATE_REGISTRY": path}
    images.build_bases(config.load("development", environ={**os.environ, **here}),
                       [images.BASES["nginx"], images.BASES["postgres"], images.BASES["certbot"]])
    for version in ("v1", "v2"):
        pushed = invoke("images.push", "--version", version, env=here)
        assert pushed.returncode == 0, pushed.stderr
    return path


def swarm_env(cluster, registry: str, tag: str) -> dict[str, str]:
    return {**isolated_env(tag), "COLORGATE_APP": "examples/static-site", "COLORGATE_TARGET": "swarm",
            "COLORGATE_DOCKER_HOST": cluster.docker_host, "COLORGATE_BIND": cluster.address, "COLORGATE_REGISTRY": registry}


def answers(settings, n: int = 24) -> list:
    ca = tls.read_local_ca(settings)
    with gates.edge_client(settings, ca) as client:
        return [client.get("/status.txt") for _ in range(n)]


def test_up_scale_a_gated_deploy_a_rollback_and_the_features_on_a_swarm(cluster, registry):
    env = swarm_env(cluster, registry, "swt")
    settings = config.load("development", environ={**os.environ, **env})

    # images built on one engine exist only there: a two-node Swarm needs the registry
    refused = invoke("up", env={**env, "COLORGATE_REGISTRY": ""})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "colorgate: this Swarm has 2 nodes, which pull their images from a registry: set COLORGATE_REGISTRY "
        "(and push with `invoke images.push`); images built on one engine exist only there"), refused.stderr
    assert not swarm_target.services(settings)
    try:
        up = invoke("up", "--version", "v1", env=env)
        assert up.returncode == 0, up.stderr
        assert edge.read_active(settings).color == "blue"
        scaled = invoke("scale", "site=3", env=env)
        assert scaled.returncode == 0, scaled.stderr
        running = swarm_target.services(settings)
        assert running["site_blue"].running == 3 and len(set(running["site_blue"].addresses.values())) == 2, running["site_blue"]
        assert running["site_green"].replicas == 0

        deployed = invoke("deploy", "--version", "v2", env=env)
        assert deployed.returncode == 0, deployed.stderr
        assert "pre gates on green (v2)" in deployed.stderr and "post gates on green (v2)" in deployed.stderr
        green = swarm_target.services(settings)["site_green"]
        assert green.running == 3 and len(set(green.addresses.values())) == 2, green  # as many as the live color, both nodes
        served = answers(settings)
        assert all(r.status_code == 200 and r.headers["x-colorgate-color"] == "green" for r in served), [r.status_code for r in served]
        upstreams = {r.headers["x-colorgate-upstream"].rsplit(":", 1)[0] for r in served}
        assert len(upstreams) == 3 and upstreams <= set(green.addresses), upstreams  # every task answered
        assert len({green.addresses[a] for a in upstreams}) == 2  # from both nodes
        states = facts.service_states(settings)
        assert states["site_green"].version == "v2" and states["site_blue"].version == "v1"

        status = invoke("status", env=env)
        assert status.returncode == 0 and "green" in status.stdout, status.stdout

        back = invoke("rollback", env=env)
        assert back.returncode == 0, back.stderr
        assert edge.read_active(settings).color == "blue"
        assert all(r.headers["x-colorgate-color"] == "blue" for r in answers(settings, 6))

        features = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "features/"],
                                  env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
                                  cwd=config.project_root())
        assert features.returncode == 0, features.stdout[-3000:]
        history = invoke("history", "--json", env=env)
        assert [r["action"] for r in __import__("json").loads(history.stdout)][-3:] == ["scale", "deploy", "rollback"]
    finally:
        down = invoke("down", "--volumes", env=env)
        assert down.returncode == 0, down.stderr
        assert not swarm_target.services(settings)


class Load:
    """GET /status.txt through the edge at a steady rate, in a thread: what each got."""

    def __init__(self, settings, rate: float = 40):
        self.settings, self.rate, self.seen, self.stop = settings, rate, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with gates.edge_client(self.settings, tls.read_local_ca(self.settings)) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    r = client.get("/status.txt")
                    self.seen.append((time.monotonic(), r.status_code, r.headers.get("x-colorgate-color", ""), r.elapsed.total_seconds()))
                except Exception as exc:  # noqa: BLE001 - counted as a failed request
                    self.seen.append((time.monotonic(), 0, repr(exc), 0.0))
                time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def failed(self, since: float = 0) -> list:
        return [s for s in self.seen if s[0] >= since and s[1] != 200]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_switches_under_load_lose_no_request_and_the_live_color_rides_out_a_lost_worker(cluster, registry):
    """Runs last in this module: it stops a node of the module's Swarm."""
    env = {**swarm_env(cluster, registry, "swl"), "COLORGATE_ANALYSIS_INTERVALS": "0"}
    settings = config.load("development", environ={**os.environ, **env})
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
            switches = len(load.seen)
            assert not load.failed() and switches > 100, load.failed()[:5]
            assert {s[2] for s in load.seen} == {"blue", "green"}

            # a worker goes away: the live color's tasks on the manager keep answering
            worker = cluster.nodes[1]
            lost_at = time.monotonic()
            runner.run(["docker", "stop", "--time", "1", worker])
            time.sleep(20)
        failed = load.failed(lost_at)
        after = [s for s in load.seen if s[0] >= lost_at]
        assert not failed and len(after) > 200, failed[:5]
        slowest = max(s[3] for s in after)
        print(f"\nswarm: {switches} requests across a deploy and 4 switches, 0 failed; {len(after)} after a worker "
              f"stopped, 0 failed, the slowest {slowest:.2f}s")
    finally:
        invoke("down", "--volumes", env=env)
