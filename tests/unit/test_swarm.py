"""The Swarm target's decisions, from captured Engine API answers (no Docker): what a
service's state is, how many tasks each colored copy gets, and the refusals."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from deploy import config, errors, profiles, render, swarmfile
from deploy.errors import ColorgateError
from deploy.target import swarm, swarmstack


def settings(**env):
    base = {
        "COLORGATE_APP": "examples/static-site",
        "COLORGATE_TARGET": "swarm",
        "COLORGATE_PROJECT": "shop",
        **env,
    }
    return profiles.load("development", root=config.project_root(), environ=base)


def task(
    state: str,
    image: str = "reg/site:v2",
    desired: str = "running",
    addresses=("10.0.1.5/24",),
    node: str = "n1",
    err: str = "",
    at: str = "2026-11-30T10:00:00Z",
) -> dict:
    return {
        "ServiceID": "s1",
        "NodeID": node,
        "DesiredState": desired,
        "UpdatedAt": at,
        "Status": {"State": state, "Err": err},
        "Spec": {
            "ContainerSpec": {"Image": f"{image}@sha256:abc", "Env": ["COLORGATE_VERSION=v2"]}
        },
        "NetworksAttachments": [{"Addresses": list(addresses)}],
    }


SERVICE = {
    "ID": "s1",
    "Spec": {
        "Name": "shop_site_green",
        "Mode": {"Replicated": {"Replicas": 3}},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "reg/site:v2@sha256:abc",
                "Env": ["COLORGATE_VERSION=v2"],
                "Labels": {"org.colorgate.color": "green"},
            }
        },
        "EndpointSpec": {
            "Ports": [{"TargetPort": 8443, "PublishedPort": 443, "PublishMode": "host"}]
        },
    },
}


def test_a_service_runs_once_all_its_replicas_run_its_current_spec():
    three = [task("running", addresses=(f"10.0.1.{n}/24",), node=f"n{n % 2}") for n in (5, 6, 7)]
    s = swarm.parse_service("shop", SERVICE, three)
    assert (s.name, s.state, s.running, s.image, s.env["COLORGATE_VERSION"]) == (
        "site_green",
        "running",
        3,
        "reg/site:v2",
        "v2",
    )
    assert s.addresses == {"10.0.1.5": "n1", "10.0.1.6": "n0", "10.0.1.7": "n1"} and s.ports == [
        "0.0.0.0:443->8443/tcp"
    ]
    # a task of the old spec, still running during an update, does not count; nor one that is shutting down
    mixed = [three[0], task("running", image="reg/site:v1"), task("running", desired="shutdown")]
    assert swarm.parse_service("shop", SERVICE, mixed).state == "starting"
    # the latest failure of the current spec is kept, for the operator
    failing = [
        task(
            "failed", err="task: non-zero exit (1)", desired="shutdown", at="2026-11-30T10:00:01Z"
        ),
        three[0],
    ]
    assert swarm.parse_service("shop", SERVICE, failing).error == "task: non-zero exit (1)"
    stopped = {**SERVICE, "Spec": {**SERVICE["Spec"], "Mode": {"Replicated": {"Replicas": 0}}}}
    # 0 replicas: stopped, its version kept
    assert swarm.parse_service("shop", stopped, []).state == "exited"
    # told to stop, a task runs on until its container has: stopping waits for that
    stopping = swarm.parse_service(
        "shop", stopped, [task("running", desired="shutdown"), task("complete", desired="shutdown")]
    )
    assert (stopping.state, stopping.alive) == ("exited", 1)
    assert swarm.parse_service("shop", SERVICE, mixed).alive == 3


def test_a_starting_color_gets_as_many_tasks_as_the_other_runs_else_the_contracts():
    s = settings()
    blank = swarm.Service("", 0, 0, "", {}, {}, [], "", {})
    assert swarmstack.replicas_for(s, {}, {"blue"}) == {"site_blue": 1, "site_green": 0}
    scaled = {"site_blue": dataclasses.replace(blank, name="site_blue", replicas=3)}
    assert swarmstack.replicas_for(s, scaled, {"blue", "green"}) == {
        "site_blue": 3,
        "site_green": 3,
    }
    both = {**scaled, "site_green": dataclasses.replace(blank, name="site_green", replicas=2)}
    assert swarmstack.replicas_for(s, both, {"green"}) == {
        "site_blue": 0,
        "site_green": 2,
    }  # a running copy keeps its count
    assert swarm.running_colors(s, both) == {"blue", "green"}
    assert (
        swarm.running_colors(s, {"site_blue": dataclasses.replace(blank, replicas=0)})
        == set()
        == swarm.running_colors(s, {})
    )


def test_a_multi_node_swarm_without_a_registry_is_refused():
    with pytest.raises(
        ColorgateError,
        match=r"^this Swarm has 3 nodes, which pull their images from a registry: set COLORGATE_REGISTRY",
    ):
        swarm.check_images_reachable(settings(), 3)
    swarm.check_images_reachable(settings(), 1)  # one node: its own engine's images will do
    swarm.check_images_reachable(settings(COLORGATE_REGISTRY="reg.example/acme"), 3)
    with pytest.raises(
        errors.ConfigError,
        match=r"^COLORGATE_TARGET 'k8s' in the environment should be compose or swarm$",
    ):
        settings(COLORGATE_TARGET="k8s")


def jobs(**env):
    return settings(COLORGATE_APP="examples/web-worker-redis", **env)


def service(name: str, replicas: int, database: str = "") -> swarm.Service:
    return swarm.Service(
        name,
        replicas,
        replicas,
        "",
        {},
        {"org.colorgate.database": database} if database else {},
        [],
        "",
        {},
    )


def test_a_paused_copy_and_a_retired_database_stay_at_no_tasks_until_a_command_says_otherwise():
    s = jobs()
    # db.move paused blue's worker (2 tasks before) and started green with its worker held
    current = {
        "web_blue": service("web_blue", 3),
        "worker_blue": service("worker_blue", 0),
        "db": service("db", 1),
        "web_green": service("web_green", 3),
        "worker_green": service("worker_green", 0),
    }
    assert swarmstack.replicas_for(s, current, {"blue", "green"}) == {
        "web_blue": 3,
        "worker_blue": 0,
        "web_green": 3,
        "worker_green": 0,
    }
    # a color that starts again gets every copy going
    stopped = {**current, "web_green": service("web_green", 0)}
    assert swarmstack.replicas_for(s, stopped, {"blue", "green"}, start="green") == {
        "web_blue": 3,
        "worker_blue": 0,
        "web_green": 3,
        "worker_green": 1,
    }
    # its other color paused too: the contract's
    assert swarmstack.resumed_count(s, current, "worker_green") == 1
    assert (
        swarmstack.resumed_count(
            s, {**current, "worker_blue": service("worker_blue", 2)}, "worker_green"
        )
        == 2
    )
    # the database db.retire-local retired stays at 0; the others run their one task
    retired = {**current, "db": service("db", 0), "cache": service("cache", 1)}
    assert swarmstack.replicas_for(s, retired, {"green"}) == {
        "db": 0,
        "web_blue": 0,
        "worker_blue": 0,
        "web_green": 3,
        "worker_green": 0,
    }


def test_a_command_that_would_point_a_running_color_at_another_database_is_found():
    s = jobs()
    current = {
        "web_blue": service("web_blue", 3, "local"),
        "web_green": service("web_green", 2, "postgresql://admin@10.0.0.9:5432/app"),
        "worker_green": service("worker_green", 1, "postgresql://admin@10.0.0.9:5432/app"),
        "web_old": service("x", 0, "local"),
    }
    env = {render.database_label_var("blue"): "local", render.database_label_var("green"): "local"}
    assert swarmstack.database_changes(s, current, env, {"blue", "green"}) == [
        "green uses postgresql://admin@10.0.0.9:5432/app, not local"
    ]
    # green is being stopped or started anew
    assert swarmstack.database_changes(s, current, env, {"blue"}) == []
    moved = {**env, render.database_label_var("green"): "postgresql://admin@10.0.0.9:5432/app"}
    assert swarmstack.database_changes(s, current, moved, {"blue", "green"}) == []
    # a stopped copy's label does not count: it starts with what the command gives it
    assert (
        swarmstack.database_changes(
            s, {"web_green": service("web_green", 0, "local")}, moved, {"green"}
        )
        == []
    )


def test_the_stack_deploy_resolves_registry_images_to_digests_and_reads_the_stack_on_stdin():
    s = settings(COLORGATE_REGISTRY="reg.example/acme")
    assert swarmstack.deploy_cmd(s)[-3:] == ["--compose-file", "-", "shop"]
    assert (
        swarmstack.deploy_cmd(s)[swarmstack.deploy_cmd(s).index("--resolve-image") + 1] == "always"
    )
    assert (
        swarmstack.deploy_cmd(settings())[
            swarmstack.deploy_cmd(settings()).index("--resolve-image") + 1
        ]
        == "never"
    )


def test_secret_files_become_swarm_secrets_at_the_same_paths_and_one_offs_use_the_stacks_networks():
    from deploy import render

    s = settings(
        COLORGATE_APP="examples/spa-api-postgres",
        POSTGRES_DB="app",
        POSTGRES_USER="app",
        POSTGRES_PASSWORD="x" * 12,
    )
    names = {
        "secrets-db": {"postgres_password": "shop_aaa"},
        "secrets-green": {"database_url": "shop_bbb"},
    }
    out = swarmfile.render(s.app, {"COLORGATE_BIND": "0.0.0.0"}, secrets=names, node="n0de1d")
    for pinned in ("postgres", "edge"):  # on the manager Colorgate talks to, with their volumes
        assert out["services"][pinned]["deploy"]["placement"] == {
            "constraints": ["node.id == n0de1d"]
        }
    db = out["services"]["postgres"]
    assert {
        "source": "shop_aaa",
        "target": "/run/colorgate-secrets/postgres_password",
        "mode": 0o444,
    } in db["secrets"]
    # a volume is one node's
    assert not any(str(v).startswith("secrets-db:") for v in db["volumes"])
    assert (
        out["services"]["backend_green"]["secrets"][0]["target"]
        == "/run/colorgate-secrets/database_url"
    )
    # not given: as it was
    assert any(
        str(v).startswith("secrets-blue:") for v in out["services"]["backend_blue"]["volumes"]
    )
    assert out["secrets"] == {"shop_aaa": {"external": True}, "shop_bbb": {"external": True}}
    assert "secrets-db" not in out["volumes"] and "pgdata" in out["volumes"]
    # a new value is a new secret (they are immutable); the same value, the same one
    assert swarmstack.secret_name(
        "shop", "secrets-db", "postgres_password", "a", "s1"
    ) != swarmstack.secret_name("shop", "secrets-db", "postgres_password", "b", "s1")
    assert swarmstack.secret_name("shop", "v", "f", "a", "s1") == swarmstack.secret_name(
        "shop", "v", "f", "a", "s1"
    )
    # salted per stack: the name of a value is not its plain digest, and differs between stacks' salts
    salted = swarmstack.secret_name("shop", "v", "f", "hunter2", "s1")
    assert (
        salted
        != swarmstack.secret_name("shop", "v", "f", "hunter2", "s2")
        != swarmstack.secret_name("shop", "v", "f", "hunter2")
    )
    assert hashlib.sha256(b"v/f/hunter2").hexdigest()[:16] not in salted
    one_offs = swarmfile.one_offs_on_swarm(render.compose(s.app), "shop")
    assert one_offs["networks"]["data"] == {"external": True, "name": "shop_data"}
    assert one_offs["volumes"]["backups"] == {"external": True, "name": "shop_backups"}


def test_node_addresses_are_the_ready_nodes_and_a_manager_without_one_gives_its_advertised_address():
    found = [
        {
            "ID": "a",
            "Description": {"Hostname": "node1"},
            "Status": {"State": "ready", "Addr": "0.0.0.0"},
            "ManagerStatus": {"Addr": "10.0.0.1:2377", "Leader": True},
        },
        {
            "ID": "b",
            "Description": {"Hostname": "node2"},
            "Status": {"State": "ready", "Addr": "10.0.0.2"},
        },
        {
            "ID": "c",
            "Description": {"Hostname": "node3"},
            "Status": {"State": "down", "Addr": "10.0.0.3"},
        },
    ]
    assert swarm.node_addresses(found) == {"node1": "10.0.0.1", "node2": "10.0.0.2"}


def test_a_service_is_spread_when_its_tasks_sit_on_as_many_nodes_as_can_take_them():
    def service(name: str, replicas: int, nodes: list[str]) -> swarm.Service:
        # two networks a task
        return swarm.Service(
            name,
            replicas,
            len(nodes),
            "img",
            {},
            {},
            [],
            "",
            {f"10.0.{i}.{n}": node for n, node in enumerate(nodes) for i in (1, 2)},
        )

    found = {
        "api_green": service("api_green", 3, ["a", "a", "b"]),
        "web_green": service("web_green", 3, ["a", "a", "a"]),
        "one_green": service("one_green", 1, ["a"]),
        "api_blue": service("api_blue", 3, ["a", "a", "a"]),
    }
    names = ["api_green", "web_green", "one_green", "gone_green"]
    assert swarm.spread_problems(found, names, nodes=2) == {
        "web_green": "its 3 task(s) run on 1 node(s), of the 2 that can take tasks"
    }
    # one node can take tasks: nothing to spread over
    assert swarm.spread_problems(found, names, nodes=1) == {}
    assert set(swarm.spread_problems(found, names, nodes=3)) == {
        "api_green",
        "web_green",
    }  # 3 tasks, 3 nodes
    nodes = [
        {"Status": {"State": "ready"}, "Spec": {"Availability": "active"}},
        {"Status": {"State": "ready"}, "Spec": {"Availability": "drain"}},
        {"Status": {"State": "down"}, "Spec": {"Availability": "active"}},
        {"Status": {"State": "ready"}},
    ]
    assert swarm.active_nodes(nodes) == 2


def node(
    name: str, state: str = "ready", address: str = "10.0.0.2", availability: str = "active"
) -> dict:
    return {
        "ID": name,
        "Description": {"Hostname": name},
        "Status": {"State": state, "Addr": address},
        "Spec": {"Availability": availability},
    }


def test_a_node_that_went_down_during_a_wait_is_named():
    before = swarm.node_addresses([node("node1"), node("node2", address="10.0.0.3")])
    assert swarm.lost_nodes(before, [node("node1"), node("node2", address="10.0.0.3")]) == []
    assert swarm.lost_nodes(
        before, [node("node1"), node("node2", state="down", address="10.0.0.3")]
    ) == ["node2"]
    assert swarm.lost_nodes(before, [node("node1")]) == ["node2"]  # removed from the Swarm
    # drained, a node is still up (its tasks move on purpose); one that joins during the wait is no loss
    assert (
        swarm.lost_nodes(
            before, [node("node1"), node("node2", availability="drain"), node("node3")]
        )
        == []
    )


def test_services_pinned_to_another_manager_are_refused():
    edge = {
        **SERVICE,
        "Spec": {
            **SERVICE["Spec"],
            "Name": "shop_edge",
            "TaskTemplate": {
                **SERVICE["Spec"]["TaskTemplate"],
                "Placement": {"Constraints": ["node.id == m4n4g3r1"]},
            },
        },
    }
    pinned = swarm.parse_service("shop", edge, [])
    assert pinned.pinned == "m4n4g3r1" and swarm.parse_service("shop", SERVICE, []).pinned == ""
    pins = {"edge": "m4n4g3r1", "site_green": ""}
    swarm.check_manager(settings(), pins, "m4n4g3r1")
    # applied through another manager, the edge (and a database) would start there, on empty volumes
    with pytest.raises(
        ColorgateError,
        match=r"^edge run on another manager \(node m4n4g3r1\), with their volumes: point COLORGATE_DOCKER_HOST",
    ):
        swarm.check_manager(settings(), pins, "0th3rm4n4g3r")
