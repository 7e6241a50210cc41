"""Facts: what the target's engine and host say. What runs (containers, or on a Swarm
its services and tasks: their state, health, version, ports, database), networks,
listening sockets; each target is read as its reader says (`reads`: ComposeReads or
SwarmReads, chosen once). (How each container is confined: deploy/target/confinement.py; the
addresses of a color's containers: deploy/target/targets.py; the app's answers as the edge sees
them: deploy/edge/probes.py.) Each fact is plain data, so a release can be decided and a gate
can explain itself from it; parsing is pure (tested on captured output)."""

from __future__ import annotations

import re
import shlex
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from deploy.target import runner, ssh, swarm
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.keys import shown_url
from deploy.errors import CommandError, NotFound, StackError


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


class SwarmReads(ComposeReads):
    """How a Swarm's stack is read, on its manager: its services and their tasks."""

    def __init__(self) -> None:
        self._task_containers: dict[tuple[str, str, str], str] = {}

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
    return runner.engine(settings.docker_host, "inspect_container", name, what=f"inspecting {name}")


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
        created = runner.engine(settings.docker_host, "exec_create", name, cmd)
        runner.engine(
            settings.docker_host, "exec_start", created["Id"]
        )  # attached: returns when it ended
        return (
            runner.engine(settings.docker_host, "exec_inspect", created["Id"]).get("ExitCode") == 0
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
    listed = runner.engine(
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
        elif name.startswith(
            f"{project}-"
        ):  # P-svc-1 (an old copy renamed on the way, ID_P-svc-1, is the same)
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


def color_database(settings: Settings, states: dict[str, ServiceState], color: str) -> str | None:
    """The database `color`'s clients use (`local` or a URL without password); None without one."""
    return next((s.database for s in states.values() if s.color == color and s.database), None)


def edge_down(settings: Settings) -> StackError | None:
    """The error to give when a command on the edge failed because it is not running
    (read from the container's state, not from docker's wording); None when it runs."""
    edge = service_states(settings).get("edge")
    return (
        None
        if edge and edge.state == "running"
        else StackError("the edge is not running: start the stack with `invoke up`")
    )


def migration_status_cmd(settings: Settings, color: str) -> list[str]:
    """The app's status command in `color`'s container. A docker CLI process, not the
    Engine API: an exec's hijacked stream through docker's ssh:// transport broke its
    pipe now and then (seen in the SSH test), and this runs once per gate phase."""
    m = settings.app.migrations
    return [
        "docker",
        "exec",
        container(settings, settings.app.copy_name(m.service, color)),
        *m.status,
    ]


def pending_migrations(settings: Settings, color: str) -> bool | None:
    """Whether `color`'s image brings migrations the database lacks: the app's status
    command, run in its running container, exits 0 at head and non-zero otherwise.
    None when the app has no status command (then migrations always run)."""
    m = settings.app.migrations
    if not m:
        return False
    if not m.status:
        return None
    if not reads(settings).runs_here(settings, settings.app.copy_name(m.service, color)):
        return None  # (a Swarm's copy with no task on the manager): unknown
    proc = runner.run(
        migration_status_cmd(settings, color),
        env=settings.docker_env(),
        check=False,
        what="migration status",
    )
    if proc.returncode in (125, 126, 127):  # docker or the command itself could not run
        raise CommandError(
            migration_status_cmd(settings, color),
            proc.returncode,
            proc.stdout,
            proc.stderr,
            "migration status",
        )
    return proc.returncode != 0


@dataclass(frozen=True)
class Network:
    name: str
    internal: bool


def service_networks(settings: Settings, service: str) -> list[Network]:
    """Networks a service's container is attached to, with their `internal` flag."""
    names = sorted(
        (
            (inspect(settings, container(settings, service)).get("NetworkSettings") or {}).get(
                "Networks"
            )
            or {}
        ).keys()
    )
    return [
        Network(
            name,
            bool(
                runner.engine(
                    settings.docker_host, "inspect_network", name, what="inspecting a network"
                ).get("Internal")
            ),
        )
        for name in names
    ]


POSTGRES_PORT = 5432


def one_offs(settings: Settings, label: str) -> list[str]:
    """Ids of this project's containers (any state) that carry `label` (key=value)."""
    listed = runner.engine(
        settings.docker_host,
        "containers",
        all=True,
        what="listing one-off containers",
        filters={"label": [f"com.docker.compose.project={settings.project}", label]},
    )
    return [item["Id"] for item in listed]


def psql_cmd(container: str, settings: Settings) -> list[str]:
    """psql inside a PostgreSQL container over its socket, as its superuser (no password, no port)."""
    return [
        "docker",
        "exec",
        "-i",
        container,
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        settings.postgres_user,
        "-d",
        settings.postgres_db,
    ]


@dataclass(frozen=True)
class DatabaseRoles:
    """The app's own role in the stack's PostgreSQL, and who is connected over the network."""

    role_super: bool | None  # None: the role does not exist
    database_owner: str
    sessions: tuple[tuple[str, str, bool], ...]  # (client address, role, superuser)


def database_roles(settings: Settings) -> DatabaseRoles:
    """Read over the database container's socket, as its superuser."""
    db = settings.app.postgres
    sql = (
        f"SELECT 'owner|' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database();\n"
        f"SELECT 'role|' || rolsuper FROM pg_roles WHERE rolname = '{settings.app_db_user}';\n"
        "SELECT 'session|' || host(a.client_addr) || '|' || a.usename || '|' || r.rolsuper FROM pg_stat_activity a "
        "JOIN pg_roles r ON r.oid = a.usesysid WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL;\n"
    )
    out = runner.run(
        psql_cmd(container(settings, db.service), settings),
        input=sql,
        env=settings.docker_env(),
        what="reading the database's roles",
    ).stdout
    role_super, owner, sessions = None, "", []
    for kind, _, rest in (line.partition("|") for line in out.splitlines()):
        if kind == "owner":
            owner = rest
        elif kind == "role":
            role_super = rest == "t"
        elif kind == "session":
            address, user, sup = rest.split("|")
            sessions.append((address, user, sup == "t"))
    return DatabaseRoles(role_super, owner, tuple(sessions))


def published_ports(settings: Settings) -> dict[str, list[str]]:
    """Host ports each service publishes (services that publish none map to [])."""
    return {name: s.ports for name, s in service_states(settings).items()}


def target_host(settings: Settings):
    """testinfra host for the machine the stack runs on: this one for a local engine,
    the SSH host of COLORGATE_DOCKER_HOST otherwise."""
    import testinfra

    if settings.docker_host.startswith("ssh://"):
        # sessions on this command's one connection
        return testinfra.get_host(
            settings.docker_host,
            ssh_extra_args=shlex.join(ssh.tunnel(settings.docker_host).ssh_args()),
        )
    return testinfra.get_host("local://")


def listening_on_port(settings: Settings, port: int) -> list[str]:
    """Sockets on the target host listening on `port`, any address (testinfra)."""
    host = target_host(settings)
    return [
        s
        for s in host.socket.get_listening_sockets()
        if s.rsplit(":", 1)[-1] == str(port) and s.startswith("tcp")
    ]


def tcp_connects(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
