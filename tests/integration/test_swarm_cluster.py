"""The test Swarm works on this machine: engines in containers form a
Swarm, an image sent to every node runs as a service spread over the nodes, and its
tasks answer across nodes by name over an overlay network (dnsrr: no IPVS here).
The Swarm target itself is tested on this cluster in test_swarm_target.py."""

from __future__ import annotations

import os

from deploy import bases, profiles

from .swarm import swarm

CLIENT = """import socket, urllib.request
ips = sorted({a[4][0] for a in socket.getaddrinfo("web", 8000)})
print(" ".join(f"{ip}={urllib.request.urlopen(f'http://{ip}:8000/', timeout=5).status}" for ip in ips))
"""


def test_engines_in_containers_form_a_swarm_whose_services_answer_across_nodes():
    settings = profiles.load("development", environ=dict(os.environ))
    python = bases.BASES["python"]
    bases.build_bases(settings, [python])
    tag = python.tag(settings.base_source)
    with swarm(settings, size=2) as cluster:
        nodes = cluster.manager(
            "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}"
        ).stdout.split("\n")
        assert sorted(n.strip() for n in nodes if n.strip()) == [
            "node1 Ready Leader",
            "node2 Ready",
        ], nodes
        cluster.send_image(tag)
        cluster.manager("network", "create", "--driver", "overlay", "--attachable", "cgnet")
        cluster.manager(
            "service",
            "create",
            "--quiet",
            "--name",
            "web",
            "--network",
            "cgnet",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--placement-pref",
            "spread=node.hostname",
            tag,
            "python3",
            "-m",
            "http.server",
            "8000",
        )
        tasks = cluster.wait_running("web", 2)
        # spread: one on each node
        assert sorted(node for node, _ in tasks) == ["node1", "node2"], tasks
        # from a container on the manager, each task (one of them on the other node) answers by the service's name
        answers = cluster.manager(
            "run", "--rm", "--network", "cgnet", tag, "python3", "-c", CLIENT
        ).stdout.split()
        assert len(answers) == 2 and all(a.endswith("=200") for a in answers), answers
