"""The test Swarm of issue #15 works on this machine: engines in containers form a
Swarm, an image sent to every node runs as a service spread over the nodes, and its
tasks answer across nodes by name over an overlay network (dnsrr: no IPVS here).
The Swarm target itself builds on this cluster."""

from __future__ import annotations

import os

import yaml

from deploy import config, edge, gates, images, render, runner, stack, tls

from .conftest import isolated_env
from .swarm import swarm

CLIENT = """import socket, urllib.request
ips = sorted({a[4][0] for a in socket.getaddrinfo("web", 8000)})
print(" ".join(f"{ip}={urllib.request.urlopen(f'http://{ip}:8000/', timeout=5).status}" for ip in ips))
"""


def test_engines_in_containers_form_a_swarm_whose_services_answer_across_nodes():
    settings = config.load("development", environ=dict(os.environ))
    python = images.BASES["python"]
    images.build_bases(settings, [python])
    tag = python.tag(settings.debian_mirror)
    with swarm(settings, size=2) as cluster:
        nodes = cluster.manager("node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}").stdout.split("\n")
        assert sorted(n.strip() for n in nodes if n.strip()) == ["node1 Ready Leader", "node2 Ready"], nodes
        cluster.send_image(tag)
        cluster.manager("network", "create", "--driver", "overlay", "--attachable", "cgnet")
        cluster.manager("service", "create", "--quiet", "--name", "web", "--network", "cgnet", "--replicas", "2",
                        "--endpoint-mode", "dnsrr", "--placement-pref", "spread=node.hostname", tag,
                        "python3", "-m", "http.server", "8000")
        tasks = cluster.wait_running("web", 2)
        assert sorted(node for node, _ in tasks) == ["node1", "node2"], tasks  # spread: one on each node
        # from a container on the manager, each task (one of them on the other node) answers by the service's name
        answers = cluster.manager("run", "--rm", "--network", "cgnet", tag, "python3", "-c", CLIENT).stdout.split()
        assert len(answers) == 2 and all(a.endswith("=200") for a in answers), answers


def edge_task(cluster, project: str) -> str:
    """The edge's container on the manager (the stack pins it there)."""
    return cluster.manager("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={project}_edge").stdout.strip()


def test_a_rendered_stack_runs_on_the_swarm_and_its_edge_switches_by_its_routing_file(tmp_path):
    """The first part of the Swarm target: the static site's stack, rendered from its
    contract with 2 tasks per color, runs on the test Swarm; the edge (on the manager,
    its ports in host mode) reaches each color's tasks on both nodes by name, and a
    switch is the same validated write of its routing file as on one host."""
    env = {**os.environ, **isolated_env("sw"), "COLORGATE_APP": "examples/static-site"}
    settings = config.load("development", environ=env)
    images.build_bases(settings, images.needed_bases(settings))
    versions = {"blue": "v1", "green": "v1"}
    runner.run(stack.compose_cmd(settings, "build", "edge", "site_blue"), env=stack.compose_env(settings, versions))
    built = [f"{settings.image_prefix}edge:latest", f"{settings.image_prefix}site:v1"]
    try:
        with swarm(settings, size=2) as cluster:
            for tag in built:
                cluster.send_image(tag)
            stack_file = render.swarm(settings.app, stack.compose_env(settings, versions), replicas={"site": 2})
            cluster.docker(cluster.nodes[0], "stack", "deploy", "--compose-file", "-", settings.project,
                           input=yaml.safe_dump(stack_file))
            for color in ("blue", "green"):
                tasks = cluster.wait_running(f"{settings.project}_site_{color}", 2, seconds=90)
                assert sorted(node for node, _ in tasks) == ["node1", "node2"], tasks
            cluster.wait_running(f"{settings.project}_edge", 1, seconds=90)
            edge_id = edge_task(cluster, settings.project)
            address = runner.run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                  cluster.nodes[0]]).stdout.strip()
            ca = cluster.docker(cluster.nodes[0], "exec", edge_id, "cat", tls.LOCAL_CA).stdout
            for color in ("blue", "green"):
                switched = cluster.docker(cluster.nodes[0], "exec", edge_id,
                                          *edge.switch_cmd(edge.render_live(color, "v1"), expect=f"color={color}"))
                assert switched.returncode == 0
                client = gates.EdgeClient(settings.domain, base_url=f"https://{address}:{settings.https_port}",
                                          verify=tls.client_context(ca), timeout=10, trust_env=False)
                with client:
                    answers = [client.get("/status.txt") for _ in range(12)]
                assert all(r.status_code == 200 and "ready" in r.text for r in answers), [r.status_code for r in answers]
                assert {r.headers["x-colorgate-color"] for r in answers} == {color}
                upstreams = {r.headers["x-colorgate-upstream"].rsplit(":", 1)[0] for r in answers}
                assert len(upstreams) == 2, upstreams  # both tasks, one on each node
    finally:
        runner.run(["docker", "rmi", *built], check=False)
