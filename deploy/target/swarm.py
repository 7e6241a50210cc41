"""The Swarm target (COLORGATE_TARGET=swarm): the same stack, releases and
gates on a Docker Swarm manager, locally or over SSH.

The stack is rendered for the Swarm (render.swarm) and applied whole with `docker stack
deploy`: each colored copy is a service whose replicas say whether that color runs (0:
stopped, its spec and version kept, as compose keeps a stopped container), so a command
changes only the services whose spec it changes. A running color keeps the replicas it
has (`invoke scale` changes them); a color that starts gets the live color's, else the
contract's. The edge and the shared services sit on the manager, with their volumes:
the edge's state (live color, lock, history, certificates) is the cluster's one truth,
read through the manager's engine as on one host.

What runs is read from the manager's Engine API: services and their tasks. A task of
a service with a health check is `running` only once healthy; so a service is ready
when all its replicas run its current spec."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from secrets import token_hex

import yaml

from deploy import images, render
from deploy.target import runner
from deploy.colors import COLORS, other
from deploy.config import Settings
from deploy.errors import CommandError, ConfigError, NotFound, StackError

STACK_LABEL = "com.docker.stack.namespace"
SERVICE_LABEL = "com.docker.swarm.service.name"
FAILED = ("failed", "rejected", "orphaned")
ALIVE = (
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
)  # a task whose container may run


def service_name(settings: Settings, service: str) -> str:
    """The Swarm service of a compose service: `<project>_<service>`."""
    return f"{settings.project}_{service}"


def nodes(settings: Settings) -> list[dict]:
    """The Swarm's nodes (the manager's view); one line when the engine is no manager."""
    try:
        return runner.engine(settings.docker_host, "nodes", what="listing the Swarm's nodes")
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
        if address in (
            "",
            "0.0.0.0",
        ):  # a manager may report none: its advertised address is in its ManagerStatus
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
    render.host_ports(
        [f"{bind}:{settings.https_port}:8443"], "services.edge.ports"
    )  # COLORGATE_BIND not loopback
    check_images_reachable(settings, ready)
    found = runner.engine(
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
    found = runner.engine(
        settings.docker_host,
        "services",
        filters={"label": f"{STACK_LABEL}={settings.project}"},
        what="listing the stack's services",
    )
    if not found:
        return {}
    tasks = runner.engine(
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
    listed = runner.engine(
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


# --- changing the Swarm ----------------------------------------------------------------


def replicas_for(
    settings: Settings, current: dict[str, Service], running: set[str], start: str = ""
) -> dict[str, int]:
    """Replicas of every service (pure). A colored copy: 0 for a color not in `running`;
    one that runs keeps its count; one at 0 in a color that ran already stays at 0
    (paused: db.move's workers), unless its color is `start`ed; one that starts gets its
    other color's count when that runs, else the contract's. A shared service runs
    one task, or none when it is at 0 (the database db.retire-local retired)."""
    app = settings.app
    ran = running_colors(settings, current)
    out = {
        name: 0
        for name, service in current.items()
        if not app.split_copy(name) and service.replicas == 0
    }
    for color in COLORS:
        for name in app.colored:
            copy = app.copy_name(name, color)
            mine = current.get(copy)
            if color not in running or (
                mine and not mine.replicas and color in ran and color != start
            ):
                out[copy] = 0
            elif mine and mine.replicas:
                out[copy] = mine.replicas
            else:
                out[copy] = resumed_count(settings, current, copy)
    return out


def resumed_count(settings: Settings, current: dict[str, Service], copy: str) -> int:
    """Tasks for a colored copy that starts (pure): its other color's count when that
    runs, else the contract's."""
    name, color = settings.app.split_copy(copy)
    theirs = current.get(settings.app.copy_name(name, other(color)))
    return theirs.replicas if theirs and theirs.replicas else settings.app.replicas.get(name, 1)


def database_changes(
    settings: Settings, current: dict[str, Service], env: dict[str, str], colors: set[str]
) -> list[str]:
    """The running `colors` whose database clients `env` would point at another
    database than the one they use (pure): a Swarm would roll them over to it."""
    out = []
    for color in sorted(colors):
        for name in settings.app.colored:
            found = current.get(settings.app.copy_name(name, color))
            had = found.labels.get("org.colorgate.database") if found and found.replicas else None
            new = env.get(render.database_label_var(color)) or "local"
            if had and had != new:
                out.append(f"{color} uses {had}, not {new}")
                break
    return out


def stack_file(
    settings: Settings,
    env: dict[str, str],
    replicas: dict[str, int],
    secrets: dict[str, dict[str, str]],
    node: str,
) -> str:
    """The stack `docker stack deploy` reads (holds the settings' values: sent on stdin)."""
    stack = render.swarm(
        settings.app,
        env,
        copies=replicas,
        secrets=secrets,
        node=node,
        encrypted=settings.swarm_encrypt == "yes",
    )
    return yaml.safe_dump(stack, sort_keys=False)


def manager_node(settings: Settings) -> str:
    """The id of the manager Colorgate talks to: the edge and the shared services run
    there, with their volumes (another manager's engine would not show their tasks)."""
    return (
        (runner.engine(settings.docker_host, "info", what="reading the engine's Swarm") or {}).get(
            "Swarm"
        )
        or {}
    ).get("NodeID", "")


def secret_name(project: str, volume: str, file: str, text: str, salt: str = "") -> str:
    """A Swarm secret is immutable: a new value is a new secret, named by its digest keyed
    by the stack's salt (stack_salt: a name shows neither the value nor which stacks share
    one; without one, the names earlier Colorgate versions gave, still used)."""
    message = f"{volume}/{file}/{text}".encode()
    return f"{project}_{(hmac.new(salt.encode(), message, 'sha256') if salt else hashlib.sha256(message)).hexdigest()[:16]}"


def stack_salt(settings: Settings) -> str:
    """The stack's random salt for its secrets' names, the label of a Swarm config of its
    own, made once under the release lock (and removed with the stack, as its secrets are)."""
    name, label = f"{settings.project}_colorgate-salt", "org.colorgate.salt"
    found = [
        c
        for c in runner.engine(settings.docker_host, "configs", filters={"name": name})
        if c["Spec"]["Name"] == name
    ]
    if found:
        return found[0]["Spec"]["Labels"][label]
    salt = token_hex(16)
    runner.engine(
        settings.docker_host,
        "create_config",
        name=name,
        data=b"the salt of this stack's secrets' names",
        labels={STACK_LABEL: settings.project, label: salt},
        what="making the stack's salt",
    )
    return salt


def ensure_secrets(
    settings: Settings, files: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """The Swarm secrets holding `files` (volume -> file -> text, access.secret_files),
    made when missing: volume -> file -> secret name (one an earlier version named
    without a salt is kept while it holds the value). Their values go to the manager's
    API only (never a command line or a log)."""
    existing = {
        s["Spec"]["Name"]
        for s in runner.engine(
            settings.docker_host,
            "secrets",
            filters={"label": f"{STACK_LABEL}={settings.project}"},
            what="listing the stack's secrets",
        )
    }
    salt = stack_salt(settings) if files else ""
    names: dict[str, dict[str, str]] = {}
    for volume, contents in files.items():
        for file, text in contents.items():
            earlier = secret_name(settings.project, volume, file, text)
            name = (
                earlier
                if earlier in existing
                else secret_name(settings.project, volume, file, text, salt)
            )
            if name not in existing:
                runner.engine(
                    settings.docker_host,
                    "create_secret",
                    name=name,
                    data=text.encode(),
                    what="making a Swarm secret",
                    labels={
                        STACK_LABEL: settings.project,
                        "org.colorgate.file": f"{volume}/{file}",
                    },
                )
            names.setdefault(volume, {})[file] = name
    return names


def prune_secrets(settings: Settings, keep: set[str]) -> None:
    """Remove the stack's secrets no service uses any longer (one still in use stays)."""
    for found in runner.engine(
        settings.docker_host, "secrets", filters={"label": f"{STACK_LABEL}={settings.project}"}
    ):
        if found["Spec"]["Name"] not in keep:
            try:
                runner.engine(settings.docker_host, "remove_secret", found["ID"])
            except CommandError:
                pass  # a task of the old spec still holds it: the next command removes it


def deploy_cmd(settings: Settings) -> list[str]:
    # images from a registry: resolved to digests, so every node runs the same bytes
    resolve = "always" if settings.image_source == "registry" else "never"
    return [
        "docker",
        "stack",
        "deploy",
        "--detach=true",
        "--with-registry-auth",
        "--resolve-image",
        resolve,
        "--compose-file",
        "-",
        settings.project,
    ]


def apply(
    settings: Settings,
    env: dict[str, str],
    start: str = "",
    stop: str = "",
    replicas: dict[str, int] | None = None,
    files: dict[str, dict[str, str]] | None = None,
) -> dict[str, Service]:
    """Make the stack run the colors that run now, plus `start`, less `stop` (the others
    at 0 replicas), with the versions and values of `env` (target.compose_env) and the
    secret `files` as Swarm secrets; `replicas` overrides copies' counts. Returns the
    services as they were before."""
    current = services(settings)
    before = running_colors(settings, current)
    running = (before | ({start} if start else set())) - {stop}
    moved = database_changes(settings, current, env, before - {start, stop})
    if moved:  # its tasks would be replaced by ones writing elsewhere: the data split between two databases
        raise StackError(
            f"this command would point a running color at another database ({'; '.join(moved)}): "
            "set DATABASE_URL to the database it uses (`invoke status` shows it)"
        )
    counts = {**replicas_for(settings, current, running, start), **(replicas or {})}
    node = manager_node(settings)
    check_manager(settings, {name: s.pinned for name, s in current.items()}, node)
    secrets = ensure_secrets(settings, files or {})
    text = stack_file(settings, env, counts, secrets, node)
    if settings.image_source == "registry":
        with images.registry_session(settings) as session:
            runner.run(
                deploy_cmd(settings), input=text, env={**env, **session}, what="docker stack deploy"
            )
    else:
        runner.run(deploy_cmd(settings), input=text, env=env, what="docker stack deploy")
    prune_secrets(settings, {name for contents in secrets.values() for name in contents.values()})
    return current


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


def wait_converged(settings: Settings, names: list[str], timeout: float) -> dict[str, Service]:
    """Until every service in `names` runs all its replicas on its current spec; a task
    that failed is said with its error when the wait ends. A node that goes down
    meanwhile ends the wait at once: the Swarm places its tasks again only once it has
    declared it down, and then maybe not within the bound (seen: over 120 s)."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    ready = node_addresses(nodes(settings))
    while True:
        current = services(settings)
        pending = [n for n in names if n not in current or current[n].state != "running"]
        if not pending:
            return current
        gone = lost_nodes(ready, nodes(settings))
        if gone:
            raise StackError(
                f"node {', '.join(gone)} went down while the Swarm started {', '.join(pending)}: run the command "
                "again once `docker node ls` shows it Down (the Swarm then places its tasks on the nodes left) or back"
            )
        if time.monotonic() > deadline:
            detail = "; ".join(
                f"{n}: {current[n].running}/{current[n].replicas} running"
                + (f", last failure: {current[n].error}" if current[n].error else "")
                if n in current
                else f"{n}: absent"
                for n in pending
            )
            raise StackError(
                f"timed out after {timeout:.0f}s waiting for the Swarm to run {', '.join(pending)} ({detail}): "
                f"see `invoke logs SERVICE`"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2)


def wait_stopped(settings: Settings, names: list[str], timeout: float, strict: bool) -> None:
    """Until no task of `names` runs any longer (a service at 0 tasks stops them after
    `stack deploy` returned). At the bound, those still running are said, or (`strict`:
    db.move's workers, which could take a job to the old database) refused."""
    deadline = time.monotonic() + timeout
    while True:
        current = services(settings)
        left = [n for n in names if n in current and current[n].alive]
        if not left:
            return
        if time.monotonic() > deadline:
            if strict:
                raise StackError(
                    f"{', '.join(left)} still running {timeout:.0f} s after being stopped: see `invoke logs SERVICE`"
                )
            runner.say(
                f"-- {', '.join(left)} still running {timeout:.0f} s after being stopped: the Swarm stops them"
            )
            return
        time.sleep(0.25)


def remove(settings: Settings, volumes: bool = False, timeout: float = 60) -> None:
    """`docker stack rm`, then wait until its tasks and networks are gone (with `volumes`, remove its volumes on the manager)."""
    runner.run(
        ["docker", "stack", "rm", settings.project],
        env=settings.docker_env(),
        check=False,
        what="docker stack rm",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = runner.engine(
            settings.docker_host,
            "containers",
            all=True,
            filters={"label": f"{STACK_LABEL}={settings.project}"},
        )
        nets = runner.engine(
            settings.docker_host, "networks", filters={"label": f"{STACK_LABEL}={settings.project}"}
        )
        if not left and not nets:
            break
        time.sleep(0.5)
    if volumes:  # the stack's, and those its one-off containers (kept migrations: removed first) and secret files use
        for one in runner.engine(
            settings.docker_host,
            "containers",
            all=True,
            filters={"label": f"com.docker.compose.project={settings.project}"},
        ):
            runner.engine(
                settings.docker_host,
                "remove_container",
                one["Id"],
                force=True,
                what="removing a one-off container",
            )
        for label in (STACK_LABEL, "com.docker.compose.project"):
            for volume in (
                runner.engine(
                    settings.docker_host,
                    "volumes",
                    filters={"label": f"{label}={settings.project}"},
                ).get("Volumes")
                or []
            ):
                runner.engine(
                    settings.docker_host,
                    "remove_volume",
                    volume["Name"],
                    force=True,
                    what="removing a volume",
                )


def ensure_volumes(settings: Settings, volumes: list[str]) -> None:
    """The stack's volumes on the manager, made (as compose labels its own) when missing:
    one-off containers use them as they are there (render.one_offs_on_swarm)."""
    found = {v["Name"] for v in runner.engine(settings.docker_host, "volumes").get("Volumes") or []}
    for volume in volumes:
        if f"{settings.project}_{volume}" not in found:
            runner.engine(
                settings.docker_host,
                "create_volume",
                f"{settings.project}_{volume}",
                what="making a volume",
                labels={
                    "com.docker.compose.project": settings.project,
                    "com.docker.compose.volume": volume,
                },
            )
