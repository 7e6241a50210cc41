"""The Swarm target (COLORGATE_TARGET=swarm): the same stack, releases and
gates on a Docker Swarm manager, locally or over SSH.

The stack is rendered for the Swarm (deploy/swarmfile.py) and applied whole with `docker stack
deploy`: each colored copy is a service whose replicas say whether that color runs (0:
stopped, its spec and version kept, as compose keeps a stopped container), so a command
changes only the services whose spec it changes. A running color keeps the replicas it
has (`invoke scale` changes them); a color that starts gets the live color's, else the
contract's. The edge and the shared services sit on the manager, with their volumes:
the edge's state (live color, lock, history, certificates) is the cluster's one truth,
read through the manager's engine as on one host.

This module reads the Swarm (its nodes, services and tasks, the checks before a command
acts); swarmstack.py changes it. What runs is read from the manager's Engine API: services
and their tasks. A task of
a service with a health check is `running` only once healthy; so a service is ready
when all its replicas run its current spec."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deploy import swarmfile
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.errors import CommandError, ConfigError, NotFound, StackError
from deploy.target import connections

STACK_LABEL = "com.docker.stack.namespace"
SERVICE_LABEL = "com.docker.swarm.service.name"
FAILED = ("failed", "rejected", "orphaned")
# a task whose container may run
ALIVE = (
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
)


def service_name(settings: Settings, service: str) -> str:
    """The Swarm service of a compose service: `<project>_<service>`."""
    return f"{settings.project}_{service}"


def nodes(settings: Settings) -> list[dict]:
    """The Swarm's nodes (the manager's view); one line when the engine is no manager."""
    try:
        return connections.engine(settings.docker_host, "nodes", what="listing the Swarm's nodes")
    except CommandError as exc:
        text = exc.stderr + exc.stdout
        if "not a swarm manager" in text or "swarm" in text.lower():
            raise ConfigError(
                f"the engine at {settings.docker_host or 'this machine'} is not a Swarm manager: run "
                "`docker swarm init` there (and join the other nodes), or set COLORGATE_TARGET=compose"
            ) from None
        raise


def check_images_reachable(settings: Settings, ready_nodes: int) -> None:
    """Images built or sent to one engine exist only there: the other nodes cannot run them."""
    if ready_nodes > 1 and settings.image_source != "registry":
        raise ConfigError(
            f"this Swarm has {ready_nodes} nodes, which pull their images from a registry: set COLORGATE_REGISTRY "
            "(and push with `invoke images.push`); images built on one engine exist only there"
        )


def node_addresses(found: list[dict]) -> dict[str, str]:
    """Each ready node's address, by hostname (pure): where its published ports are."""
    out = {}
    for node in found:
        status = node.get("Status") or {}
        address = status.get("Addr") or ""
        # a manager may report none: its advertised address is in its ManagerStatus
        if address in (
            "",
            "0.0.0.0",
        ):
            address = ((node.get("ManagerStatus") or {}).get("Addr") or "").rsplit(":", 1)[0]
        if status.get("State") == "ready" and address:
            out[(node.get("Description") or {}).get("Hostname") or node.get("ID", "")] = address
    return out


def active_nodes(found: list[dict]) -> int:
    """How many nodes can take tasks: ready, and not paused or drained (pure)."""
    return sum(
        1
        for n in found
        if (n.get("Status") or {}).get("State") == "ready"
        and (n.get("Spec") or {}).get("Availability", "active") == "active"
    )


def spread_problems(found: dict[str, Service], names: list[str], nodes: int) -> dict[str, str]:
    """The services of `names` whose tasks sit on fewer nodes than they could: Swarm
    spreads a service's tasks over the nodes that can take them, so one node's loss
    takes at most its share (pure)."""
    out = {}
    for name in names:
        service = found.get(name)
        if not service or service.replicas < 2:
            continue
        on, could = len(set(service.addresses.values())), min(service.replicas, nodes)
        if on < could:
            out[name] = (
                f"its {service.running} task(s) run on {on} node(s), of the {nodes} that can take tasks"
            )
    return out


def check_target(settings: Settings) -> int:
    """Refuse what cannot work on this Swarm; returns how many nodes are ready."""
    ready = sum(1 for n in nodes(settings) if (n.get("Status") or {}).get("State") == "ready")
    bind = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
    # COLORGATE_BIND not loopback
    swarmfile.host_ports([f"{bind}:{settings.https_port}:8443"], "services.edge.ports")
    check_images_reachable(settings, ready)
    found = connections.engine(
        settings.docker_host,
        "services",
        filters={"label": f"{STACK_LABEL}={settings.project}"},
        what="listing the stack's services",
    )
    check_manager(
        settings,
        {s["Spec"]["Name"].removeprefix(f"{settings.project}_"): _pinned(s["Spec"]) for s in found},
    )
    return ready


def check_manager(settings: Settings, pins: dict[str, str], node: str = "") -> None:
    """The edge and the shared services run, with their volumes, on the manager the
    stack was first applied through: through another, they would start there on empty
    volumes. `pins`: service -> the node id its placement names."""
    node = node or manager_node(settings)
    elsewhere = sorted(name for name, pin in pins.items() if pin and pin != node)
    if elsewhere:
        raise StackError(
            f"{', '.join(elsewhere)} run on another manager (node {pins[elsewhere[0]]}), with their volumes: point "
            "COLORGATE_DOCKER_HOST at that manager (`docker node ls` names it)"
        )


# --- reading the Swarm -------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """A service of the stack as the manager reports it, with its tasks that should run."""

    name: str  # the compose service: `site_blue`, `edge`
    replicas: int
    running: int  # tasks running the current spec (healthy, when it has a check)
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    ports: list[str]
    error: str  # the latest failed task's error, "" when none
    addresses: dict[str, str]  # task address -> node id, of the tasks running the current spec
    spec: dict = field(default_factory=dict, repr=False)  # its tasks' container spec
    alive: int = 0  # tasks whose container may still run, of any spec, told to stop or not
    pinned: str = ""  # the node id its placement names (`node.id == ID`), "" when none

    @property
    def state(self) -> str:
        if self.replicas == 0:
            return "exited"
        return "running" if self.running >= self.replicas else "starting"


def _spec_key(container_spec: dict) -> str:
    return json.dumps(
        {"image": container_spec.get("Image"), "env": sorted(container_spec.get("Env") or [])}
    )


def parse_service(project: str, service: dict, tasks: list[dict]) -> Service:
    """A service and its tasks (Engine API dicts) -> Service (pure)."""
    spec = service.get("Spec") or {}
    container = ((spec.get("TaskTemplate") or {}).get("ContainerSpec")) or {}
    current = _spec_key(container)
    mode = spec.get("Mode") or {}
    replicas = (
        int(((mode.get("Replicated") or {}).get("Replicas")) or 0)
        if "Replicated" in mode
        else len(tasks)
    )
    running, error, addresses, alive = 0, "", {}, 0
    for task in sorted(tasks, key=lambda t: t.get("UpdatedAt") or ""):
        status = task.get("Status") or {}
        alive += status.get("State") in ALIVE
        mine = _spec_key(((task.get("Spec") or {}).get("ContainerSpec")) or {}) == current
        if status.get("State") in FAILED and mine:
            error = status.get("Err") or status.get("Message") or status.get("State")
        if task.get("DesiredState") == "running" and status.get("State") == "running" and mine:
            running += 1
            for net in task.get("NetworksAttachments") or []:
                for address in net.get("Addresses") or []:
                    addresses[address.split("/", 1)[0]] = task.get("NodeID", "")
    ports = [
        f"0.0.0.0:{p['PublishedPort']}->{p['TargetPort']}/{p.get('Protocol', 'tcp')}"
        for p in ((spec.get("EndpointSpec") or {}).get("Ports") or [])
        if p.get("PublishedPort")
    ]
    env = dict(e.split("=", 1) for e in container.get("Env") or [] if "=" in e)
    return Service(
        spec.get("Name", "").removeprefix(f"{project}_"),
        replicas,
        running,
        (container.get("Image") or "").split("@", 1)[0],
        env,
        container.get("Labels") or {},
        sorted(ports),
        error,
        addresses,
        container,
        alive,
        _pinned(spec),
    )


def _pinned(spec: dict) -> str:
    """The node id a service's placement pins it to (`node.id == ID`), "" when none (pure)."""
    for constraint in ((spec.get("TaskTemplate") or {}).get("Placement") or {}).get(
        "Constraints"
    ) or []:
        key, _, value = constraint.partition("==")
        if key.strip() == "node.id":
            return value.strip()
    return ""


def services(settings: Settings) -> dict[str, Service]:
    """Every service of the stack, by compose service name."""
    found = connections.engine(
        settings.docker_host,
        "services",
        filters={"label": f"{STACK_LABEL}={settings.project}"},
        what="listing the stack's services",
    )
    if not found:
        return {}
    tasks = connections.engine(
        settings.docker_host,
        "tasks",
        filters={"label": f"{STACK_LABEL}={settings.project}"},
        what="listing the stack's tasks",
    )
    by_service: dict[str, list[dict]] = {}
    for task in tasks:
        by_service.setdefault(task.get("ServiceID", ""), []).append(task)
    parsed = (parse_service(settings.project, s, by_service.get(s["ID"], [])) for s in found)
    return {s.name: s for s in parsed}


def task_container(settings: Settings, service: str) -> str:
    """The running container of `service`'s task on the manager (the edge, a shared
    service: the stack pins them there). Raises NotFound as a missing container would."""
    listed = connections.engine(
        settings.docker_host,
        "containers",
        filters={
            "label": f"{SERVICE_LABEL}={service_name(settings, service)}",
            "status": "running",
        },
        what=f"finding {service}'s container",
    )
    if not listed:
        raise NotFound(
            ["docker", "inspect", service_name(settings, service)],
            1,
            "",
            f"Error: No such object: no running task of {service_name(settings, service)} on this node",
        )
    return sorted(listed, key=lambda c: c.get("Created", 0))[-1]["Id"]


# --- the manager ------------------------------------------------------------------------


def manager_node(settings: Settings) -> str:
    """The id of the manager Colorgate talks to: the edge and the shared services run
    there, with their volumes (another manager's engine would not show their tasks)."""
    return (
        (
            connections.engine(settings.docker_host, "info", what="reading the engine's Swarm")
            or {}
        ).get("Swarm")
        or {}
    ).get("NodeID", "")


def running_colors(settings: Settings, current: dict[str, Service]) -> set[str]:
    """The colors whose copies have replicas (pure)."""
    return {
        c
        for c in COLORS
        if any(
            current[copy].replicas
            for n in settings.app.colored
            if (copy := settings.app.copy_name(n, c)) in current
        )
    }


def lost_nodes(before: dict[str, str], found: list[dict]) -> list[str]:
    """The nodes of `before` (node_addresses) that are not ready in `found` (pure)."""
    return sorted(set(before) - set(node_addresses(found)))
