"""Facts: what the target's engine says of what runs (containers, or on a Swarm its
services and tasks: their state, health, version, ports, database, a crash loop, the
dry run of a start); each target is read as its reader says (`reads`: ComposeReads or
SwarmReads, chosen once). (Networks and sockets: sockets.py; the app's database: dbfacts.py; how each container
is confined: confinement.py; the
addresses of a color's containers: deploy/target/targets.py; the app's answers as the edge sees
them: deploy/edge/probes.py.) Each fact is plain data, so a release can be decided and a gate
can explain itself from it; parsing is pure (tested on captured output)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from deploy import swarmfile
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.errors import CommandError, NotFound, StackError
from deploy.target import connections, swarm, swarmstack
from deploy.urls import shown_url


class ComposeReads:
    """How one engine's stack is read: compose names each service's container and
    labels it with the project."""

    def container(self, settings: Settings, service: str, fresh: bool) -> str:
        return f"{settings.project}-{service}-1"

    def states(self, settings: Settings) -> dict[str, ServiceState]:
        return _compose_states(settings)

    def runs_here(self, settings: Settings, service: str) -> bool:
        """Whether a command can run in `service`'s container on the engine asked."""
        return True

    def rendered(self, settings: Settings, rendered: dict) -> dict:
        """The compose file rendered from the app's, as this target runs it."""
        return rendered


class SwarmReads(ComposeReads):
    """How a Swarm's stack is read, on its manager: its services and their tasks."""

    def __init__(self) -> None:
        self._task_containers: dict[tuple[str, str, str], str] = {}
        self._volumes_made: set[tuple[str, str]] = set()

    def container(self, settings: Settings, service: str, fresh: bool) -> str:
        """Its running task's container on the manager, looked up once unless `fresh`."""
        key = (settings.docker_host, settings.project, service)
        if fresh or key not in self._task_containers:
            self._task_containers[key] = swarm.task_container(settings, service)
        return self._task_containers[key]

    def states(self, settings: Settings) -> dict[str, ServiceState]:
        """Every service of the stack: `running` once all its replicas run its spec."""
        return {
            name: ServiceState(
                name,
                state=s.state,
                health="starting" if s.state == "starting" else "",
                image=s.image,
                ports=s.ports,
                **_colorgate_labels(settings, name, s.labels, s.env),
            )
            for name, s in swarm.services(settings).items()
        }

    def runs_here(self, settings: Settings, service: str) -> bool:
        """A task of it on the manager (a command runs through the manager's engine)."""
        try:
            self.container(settings, service, fresh=True)
        except NotFound:
            return False
        return True

    def rendered(self, settings: Settings, rendered: dict) -> dict:
        """For one-off containers on the stack's networks and volumes, which are made first."""
        if (settings.docker_host, settings.project) not in self._volumes_made:
            swarmstack.ensure_volumes(settings, list(rendered["volumes"]))
            self._volumes_made.add((settings.docker_host, settings.project))
        return swarmfile.one_offs_on_swarm(rendered, settings.project)

    def forget_volumes(self, settings: Settings) -> None:
        """The stack's volumes were removed: the next one-off makes them again."""
        self._volumes_made.discard((settings.docker_host, settings.project))


COMPOSE_READS, SWARM_READS = ComposeReads(), SwarmReads()


def reads(settings: Settings) -> ComposeReads:
    """How the target of these settings is read (COLORGATE_TARGET): the one place that
    asks which target it is (deploy.target.targets gives each its operations)."""
    return SWARM_READS if settings.swarm else COMPOSE_READS


def container(settings: Settings, service: str, fresh: bool = False) -> str:
    """The container of a service (on a Swarm, its running task's on the manager)."""
    return reads(settings).container(settings, service, fresh)


@dataclass(frozen=True)
class ServiceState:
    service: str  # the compose service: `api_blue`, `db`, `edge`
    color: str | None
    state: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, or "" without a health check
    image: str
    version: str
    ports: list[str]
    database: str = (
        ""  # the database's clients: `local` or the managed database's URL without its password
    )
    app_service: str = ""  # the app's service it runs (`api` for `api_blue`)
    restarted: str = ""  # a crash loop the engine's restart policy hides (crash_loop), or ""

    @property
    def ready(self) -> bool:
        """Running, and healthy by the engine's own check (or without one)."""
        return self.state == "running" and self.health in ("healthy", "")

    @property
    def up(self) -> bool:
        """Running and not failing its check: the engine checks five minutes apart (an idle host stays idle), so a
        container started since is still `starting`; a release waits for it actively (`passes_healthcheck`)."""
        return self.state == "running" and self.health != "unhealthy"


def inspect(settings: Settings, name: str) -> dict:
    """`docker inspect` of a container (by name or id), through the Engine API."""
    return connections.engine(
        settings.docker_host, "inspect_container", name, what=f"inspecting {name}"
    )


def passes_healthcheck(settings: Settings, service: str) -> bool:
    """The container's own health check (its image's or compose's) run now, inside it, not at the engine's next turn."""
    name = container(settings, service)
    test = ((inspect(settings, name).get("Config") or {}).get("Healthcheck") or {}).get("Test") or [
        "NONE"
    ]
    if test[0] == "NONE":
        return True
    cmd = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
    try:
        created = connections.engine(settings.docker_host, "exec_create", name, cmd)
        # attached: returns when it ended
        connections.engine(settings.docker_host, "exec_start", created["Id"])
        return (
            connections.engine(settings.docker_host, "exec_inspect", created["Id"]).get("ExitCode")
            == 0
        )
    except CommandError:  # stopped meanwhile: not ready
        return False


def parallel(fn, items: list) -> list:
    """fn over items at once (each an Engine API round trip, or a check in a container):
    results in order. Over SSH the round trips overlap instead of adding up."""
    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def inspected(settings: Settings, name: str) -> dict | None:
    try:
        return inspect(settings, name)
    except NotFound:  # removed since it was listed
        return None


def service_states(settings: Settings) -> dict[str, ServiceState]:
    """The state of every container of this project, by compose service (on a Swarm,
    of every service of the stack: `running` once all its replicas run its spec)."""
    return reads(settings).states(settings)


def _compose_states(settings: Settings) -> dict[str, ServiceState]:
    found: dict[str, ServiceState] = {}
    listed = connections.engine(
        settings.docker_host,
        "containers",
        all=True,
        filters={"label": f"com.docker.compose.project={settings.project}"},
        what="listing containers",
    )
    # not one-offs, nor containers merely run from an image compose built (its labels inherited)
    ours = [
        item
        for item in listed
        if (item.get("Labels") or {}).get("com.docker.compose.oneoff") != "True"
        and "com.docker.compose.config-hash" in (item.get("Labels") or {})
    ]
    for item, c in zip(
        ours, parallel(lambda item: inspected(settings, item["Id"]), ours), strict=True
    ):
        if c is None:
            continue  # removed since the listing
        labels = item.get("Labels") or {}
        service = labels.get("com.docker.compose.service", c["Name"].lstrip("/"))
        config = c.get("Config") or {}
        env = dict(entry.split("=", 1) for entry in (config.get("Env") or []) if "=" in entry)
        ports = []
        for container_port, bindings in (
            (c.get("NetworkSettings") or {}).get("Ports") or {}
        ).items():
            for b in bindings or []:
                ports.append(f"{b['HostIp']}:{b['HostPort']}->{container_port}")
        state = c.get("State") or {}
        found[service] = ServiceState(
            service,
            state=state.get("Status", ""),
            health=(state.get("Health") or {}).get("Status", "") or "",
            image=config.get("Image", ""),
            ports=sorted(ports),
            restarted=crash_loop(c, time.time()),
            **_colorgate_labels(settings, service, labels, env),
        )
    return found


RECENT_RESTART_S = 600


def crash_loop(inspected: dict, now: float) -> str:
    """A container its restart policy brought back in the last RECENT_RESTART_S, or "": between
    crashes it answers its health check (a candidate killed for memory passed `up` so)."""
    state = inspected.get("State") or {}
    count, started = (
        inspected.get("RestartCount") or 0,
        re.sub(r"(\.\d{6})\d*", r"\1", str(state.get("StartedAt") or "")),
    )
    try:
        ago = now - datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return ""
    if not count or ago > RECENT_RESTART_S:
        return ""
    why = (
        "out of memory (raise COLORGATE_MEMORY_LIMIT or mem_limit, or use less)"
        if state.get("OOMKilled")
        else "it exited"
    )
    return f"restarted {count} time{'s' * (count != 1)}, the last {ago:.0f}s ago: {why}"


def _colorgate_labels(settings: Settings, service: str, labels: dict, env: dict[str, str]) -> dict:
    """What Colorgate's labels and a color's environment say of a container or a Swarm
    service: its color, version, app service and (of a database client) its database."""
    db = settings.app.database
    app_service = labels.get("org.colorgate.service", service)
    color = (
        labels.get("org.colorgate.color") if labels.get("org.colorgate.color") in COLORS else None
    )
    is_client = bool(color and db and app_service in db.clients)
    # the label (the URL may be a file), else the variable (a container made before it)
    database = (
        (
            labels.get("org.colorgate.database")
            or database_shown(settings, env.get(next(iter(db.env), ""), ""))
        )
        if is_client
        else ""
    )
    return {
        "color": color,
        "version": env.get("COLORGATE_VERSION", "") if color else "",
        "database": database,
        "app_service": app_service,
    }


def database_shown(settings: Settings, url: str) -> str:
    """`local` for the stack's own database (or none), else the URL without its password."""
    db = settings.app.database
    if not url or (db and urlsplit(url).hostname == db.service):
        return "local"
    return shown_url(url)


# What `docker compose --dry-run up` says it would do, per line: `Container P-svc-1  Recreate`,
# `Network P_name  Removed`. Only what changes something that already runs counts.
_DRY_RUN = re.compile(
    r"DRY-RUN MODE -\s+(Container|Network)\s+(\S+)\s+(Recreate|Creating|Removed|Removing)\s*$"
)


def parse_dry_run(text: str, project: str) -> dict[str, str]:
    """What a `docker compose --dry-run up` would change (pure): {"service S": "recreate"
    | "create", "network N": "recreate"}, from its progress lines (a network compose
    would remove is one whose definition changed: it makes it again)."""
    found: dict[str, str] = {}
    for m in filter(None, map(_DRY_RUN.search, text.splitlines())):
        kind, name, action = m.groups()
        if kind == "Network":
            if action.startswith("Creat"):
                continue  # a new network: nothing runs on it yet
            found[f"network {name.removeprefix(project + '_')}"] = "recreate"
        # P-svc-1 (an old copy renamed on the way, ID_P-svc-1, is the same)
        elif name.startswith(f"{project}-"):
            service = name.removeprefix(f"{project}-").rsplit("-", 1)[0]
            found.setdefault(f"service {service}", "recreate" if action == "Recreate" else "create")
    return found


def running_versions(states: dict[str, ServiceState]) -> dict[str, str]:
    """Version each color runs now (colors with no container are left out)."""
    versions: dict[str, str] = {}
    for s in sorted(states.values(), key=lambda s: s.service):
        if s.color and s.version:
            versions.setdefault(s.color, s.version)
    return versions


def edge_down(settings: Settings) -> StackError | None:
    """The error to give when a command on the edge failed because it is not running
    (read from the container's state, not from docker's wording); None when it runs."""
    edge = service_states(settings).get("edge")
    return (
        None
        if edge and edge.state == "running"
        else StackError("the edge is not running: start the stack with `invoke up`")
    )


def one_offs(settings: Settings, label: str) -> list[str]:
    """Ids of this project's containers (any state) that carry `label` (key=value)."""
    listed = connections.engine(
        settings.docker_host,
        "containers",
        all=True,
        what="listing one-off containers",
        filters={"label": [f"com.docker.compose.project={settings.project}", label]},
    )
    return [item["Id"] for item in listed]
