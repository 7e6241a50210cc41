"""db.move and db.retire-local on a Swarm, with the jobs example: a routed
web service and a worker in two colors, Redis and PostgreSQL shared, on the manager of
a test Swarm of two engines that pull from a registry. The managed database is a
PostgreSQL on the cluster's network, reached by URL. The replication relay is a
one-off container on the manager, beside the database, published on the manager's
address; the workers pause and start again as services at 0 tasks and back. The dump
move reaches the manager over SSH."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import httpx
import pytest

from benchmarks.db_move import managed_postgres
from benchmarks.remote_and_idle import keygen, operator_env, operator_home, ssh_host
from deploy import bases, config, edge, errors, images, profiles, urls
from deploy.data import relay
from deploy.target import facts, runner, sockets
from deploy.target import swarm as swarm_target

from .conftest import invoke, isolated_env, remove_stack
from .swarm import IN_THE_CLEAR, swarm
from .test_examples import all_done_on, post_job

JOBS = {"COLORGATE_APP": str(config.project_root() / "examples" / "web-worker-redis")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    settings = profiles.load("development", environ=dict(os.environ))
    with swarm(
        settings, size=2, registry=True, socket_dir=str(tmp_path_factory.mktemp("manager"))
    ) as made:
        yield made


@pytest.fixture(scope="module")
def pushed(cluster):
    """The jobs app's images v1 to v3 in the cluster's registry, built here as CI would (a
    move releases the next version the manager has not pulled yet)."""
    run = isolated_env("swi")
    here = {
        **JOBS,
        "COLORGATE_PROJECT": run["COLORGATE_PROJECT"],
        "COLORGATE_IMAGE_PREFIX": run["COLORGATE_IMAGE_PREFIX"],
        "COLORGATE_REGISTRY": f"{cluster.registry}/{run['COLORGATE_PROJECT']}",
    }
    built = profiles.load("development", environ={**os.environ, **here})
    bases.build_bases(built, bases.needed_bases(built))
    try:
        for version in ("v1", "v2", "v3"):
            pushed = invoke("images.push", "--version", version, env=here)
            assert pushed.returncode == 0, pushed.stderr
        yield {
            "COLORGATE_REGISTRY": here["COLORGATE_REGISTRY"],
            "managed_image": images.app_tag(built, "db", "latest"),
        }
    finally:
        remove_stack(built)  # the tags made here


def swarm_env(cluster, pushed, tag: str) -> dict[str, str]:
    return {
        **isolated_env(tag),
        **JOBS,
        **IN_THE_CLEAR,
        "COLORGATE_REGISTRY": pushed["COLORGATE_REGISTRY"],
        "COLORGATE_TARGET": "swarm",
        "COLORGATE_DOCKER_HOST": cluster.docker_host,
        "COLORGATE_BIND": cluster.address,
        # the relay on the manager's address, where the managed database (on the cluster's network) reaches it;
        # the example's PostgreSQL 15 cannot check it against system CAs: told so
        "COLORGATE_MOVE_RELAY_BIND": cluster.address,
        "COLORGATE_MOVE_RELAY_HOST": cluster.address,
        "COLORGATE_MOVE_RELAY_PORT": "15433",
        "COLORGATE_MOVE_RELAY_SSLMODE": "require",
    }


def test_the_jobs_app_moves_to_a_managed_database_and_retires_its_own_on_a_swarm(cluster, pushed):
    env = swarm_env(cluster, pushed, "swm")
    settings = profiles.load("development", environ={**os.environ, **env})
    posted, stop = [], threading.Event()

    def keep_posting():
        while not stop.is_set():
            with contextlib.suppress(AssertionError, httpx.HTTPError):
                posted.append(post_job(settings, "during the move"))
            time.sleep(0.2)

    try:
        up = invoke("up", "--version", "v1", env=env)
        assert up.returncode == 0, up.stderr
        assert invoke("scale", "worker=2", env=env).returncode == 0
        before = post_job(settings, "before the move")
        with managed_postgres(
            settings, pushed["managed_image"], network=cluster.network
        ) as managed:
            poster = threading.Thread(target=keep_posting)
            poster.start()
            try:
                moved = invoke(
                    "db.move", "--mode", "replicate", env={**env, "COLORGATE_MOVE_TO": managed.url}
                )
            finally:
                stop.set()
                poster.join()
            out = moved.stderr
            assert moved.returncode == 0, out[-3000:]
            assert managed.password not in moved.stdout + out
            assert "pausing blue's workers (worker_blue)" in out
            assert out.index("ok writes open again") < out.index(
                "-> starting green's workers (worker_green)"
            )
            # the new color's web and worker use the managed database, its worker with as many tasks as blue's had;
            # blue (on the old database) is stopped, the relay gone
            services = swarm_target.services(settings)
            assert {
                name: services[name].replicas
                for name in ("web_blue", "worker_blue", "web_green", "worker_green")
            } == {"web_blue": 0, "worker_blue": 0, "web_green": 1, "worker_green": 2}
            states = facts.service_states(settings)
            assert {states[f"{name}_green"].database for name in ("web", "worker")} == {
                urls.shown_url(managed.url)
            }
            assert not relay.left(settings, {})
            assert managed.sql(f"SELECT text FROM jobs WHERE id = {before}") == "before the move"
            assert len(posted) > 10
            # queued during the move: done, on the new database
            all_done_on(managed, [before, *posted])
            assert edge.read_database_record(settings)["url"] == urls.shown_url(managed.url)

            # the move's own backup of the local database is verified: it may retire; the database service stays at
            # 0 tasks through the next release, which runs on the managed database alone
            on_managed = {**env, "DATABASE_URL": managed.url}
            retired = invoke("db.retire-local", env=on_managed)
            assert retired.returncode == 0 and "db" in retired.stdout, retired.stderr
            assert swarm_target.services(settings)["db"].replicas == 0
            # the move released v2 on green
            deployed = invoke("deploy", "--version", "v2", "--force", env=on_managed)
            assert deployed.returncode == 0 and "post gates on blue (v2)" in deployed.stderr, (
                deployed.stderr[-3000:]
            )
            services = swarm_target.services(settings)
            assert (
                services["db"].replicas,
                services["web_blue"].running,
                services["worker_blue"].running,
            ) == (0, 1, 2)
            all_done_on(managed, [post_job(settings, "after the retirement")])
    finally:
        down = invoke("down", "--volumes", env=env)
        assert down.returncode == 0, down.stderr


def test_a_dump_move_on_a_swarm_over_ssh_starts_the_candidate_on_the_restored_database(
    cluster, pushed, tmp_path
):
    """--mode dump, with the manager reached over SSH (an sshd in front of its engine, as
    on a server): the candidate's tasks start on the empty target and are ready only
    once the dump is restored there; the jobs queued meanwhile are done on it."""
    with ssh_host(keygen(tmp_path / "home" / ".ssh" / "id_ed25519"), socket=cluster.socket) as host:
        base = swarm_env(cluster, pushed, "swk")
        env = operator_env(
            {**base, "COLORGATE_DOCKER_HOST": host.url}, operator_home(tmp_path, host.port)
        )
        # the same manager, for the test's own looks
        settings = profiles.load("development", environ={**os.environ, **base})
        try:
            up = invoke("up", "--version", "v1", env=env)
            assert up.returncode == 0 and f"engine {host.url}" in up.stdout, up.stderr[-3000:]
            before = [post_job(settings, f"before {n}") for n in range(5)]
            with managed_postgres(
                settings, pushed["managed_image"], network=cluster.network
            ) as managed:
                moved = invoke(
                    "db.move", "--mode", "dump", env={**env, "COLORGATE_MOVE_TO": managed.url}
                )
                assert moved.returncode == 0, moved.stderr[-3000:]
                assert "waiting for green on the restored database" in moved.stderr
                # the gates ran over the same connection, the host checks too
                assert (
                    "PASS  No public database port: Nothing on the host answers on the database port"
                    in moved.stderr
                )
                services = swarm_target.services(settings)
                assert (
                    services["web_green"].running,
                    services["worker_green"].running,
                    services["web_blue"].replicas,
                ) == (1, 1, 0)
                after = post_job(settings, "after the move")
                all_done_on(managed, [*before, after])
                assert managed.sql(f"SELECT done_by FROM jobs WHERE id = {after}").startswith(
                    "green v"
                )
                history = invoke("history", "--json", env={**env, "DATABASE_URL": managed.url})
                assert '"action": "db.move"' in history.stdout, history.stderr
                # a second manager: a command through it is refused in one line (applied through it, the edge and
                # the shared services would move there, onto empty volumes)
                second = swarm_target.node_addresses(swarm_target.nodes(settings))["node2"]
                cluster.manager("node", "promote", "node2")
                runner.run(
                    [
                        "docker",
                        "exec",
                        "--detach",
                        cluster.nodes[1],
                        "socat",
                        "TCP-LISTEN:2376,fork,reuseaddr",
                        "UNIX-CONNECT:/var/run/docker.sock",
                    ]
                )
                try:
                    deadline = time.monotonic() + 60
                    while not (
                        sockets.tcp_connects(second, 2376, timeout=0.5)
                        and cluster.docker(
                            cluster.nodes[1], "info", "--format", "{{.Swarm.ControlAvailable}}"
                        ).stdout.strip()
                        == "true"
                    ):
                        assert time.monotonic() < deadline, (
                            "node2 did not become a manager within 60 s"
                        )
                        time.sleep(0.2)
                    other = invoke(
                        "deploy",
                        env={
                            **base,
                            "COLORGATE_DOCKER_HOST": f"tcp://{second}:2376",
                            "DATABASE_URL": managed.url,
                        },
                    )
                    assert other.returncode == errors.FAILED and other.stderr.strip().splitlines()[
                        -1
                    ].startswith("colorgate: cache, db, edge run on another manager (node "), (
                        other.stderr
                    )
                finally:
                    runner.run(
                        ["docker", "exec", cluster.nodes[1], "pkill", "-f", "TCP-LISTEN:2376"],
                        check=False,
                    )
                    cluster.manager("node", "demote", "node2")
        finally:
            down = invoke("down", "--volumes", env=env)
            assert down.returncode == 0, down.stderr
