"""A changed contract or settings reaching a running stack (`invoke up` and `invoke apply`,
whose plan and steps are starting.py's; `down`; on a Swarm `invoke scale`), in the order
that keeps the live color answering. A release never does this: it starts only its
candidate, and refuses while anything here is pending (decide.plan_deploy).

What can change beside the colors, as compose's own dry run and the edge's routes say:

    the edge's routes     written into its state and reloaded gracefully: no new container
    a shared service      recreated (compose); the database after a verified backup, its
    or the edge           clients' requests held at the edge while it restarts; on staging
                          and production only with --yes
    a new network         made, and the live color's running containers attached to it,
                          before a shared service moves onto it
    a network's options   refused: Docker cannot change a network in place, and making it
                          again would cut the live color off it

The live color itself is left as it runs: the next release's candidate brings its changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploy import edge, render, stack
from deploy.colors import other
from deploy.config import Settings
from deploy.edge.locking import lock, recorded
from deploy.errors import BadInput, CommandError, ConfigError, StackError
from deploy.keys import STRICT_PROFILES
from deploy.release import plans
from deploy.release.history import Record
from deploy.target import compose, facts, runner, sockets, targets


@dataclass(frozen=True)
class Change:
    kind: str  # "routes", "service" or "network"
    name: str  # the service or network ("edge" for the routes)
    how: str  # "reload", "recreate" or "create"

    def __str__(self) -> str:
        if self.kind == "routes":
            return "the edge's routes would be reloaded"
        return f"{'the network ' if self.kind == 'network' else ''}{self.name} would be {self.how}d"


def changes_from(
    dry_run: dict[str, str], beside: list[str], routes_running: str, routes_wanted: str
) -> list[Change]:
    """What a running stack lacks of the contract (pure): from compose's dry run
    (facts.parse_dry_run), the services that run beside the colors and the digests of the
    routes the edge has and of those the contract renders."""
    found = [Change("routes", "edge", "reload")] if routes_running != routes_wanted else []
    for what, how in dry_run.items():
        kind, _, name = what.partition(" ")
        if kind == "network" or name in beside:
            found.append(Change(kind, name, how))
    return found


def changes(
    settings: Settings,
    color: str,
    versions: dict[str, str],
    retired: bool = False,
    routes_line: str | None = None,
) -> list[Change]:
    """What starting `color` (a candidate) would change beside it, or what `invoke up`
    applies: read from compose's own dry run (its decision, not a guess at it) and the
    edge's routes (`routes_line`: their first line, when already read). On a Swarm the
    stack is applied as a whole: only the routes are read."""
    beside = stack.infra_services(settings, retired)
    line = edge.read_routes_line(settings) if routes_line is None else routes_line
    wanted = edge.routes_digest(edge.edge_routes_file(settings.app))
    dry_run = targets.of(settings).dry_run(
        settings, [*beside, *settings.app.color_services(color)], versions
    )
    return changes_from(dry_run, beside, edge.routes_digest(line), wanted)


def refusal(found: list[Change]) -> str:
    """Why a release does not start while `found` is pending, and what applies it."""
    return (
        f"the contract or the settings changed what runs beside the colors ({', '.join(map(str, found))}); "
        "a release starts only its candidate: apply the change first with `invoke apply` (`--plan` shows it), then deploy"
    )


def check(found: list[Change], profile: str, yes: bool, database: str | None) -> None:
    """Refuse what cannot be applied safely (pure): a network whose options changed, and,
    on staging or production without `yes`, recreating a service."""
    networks = [c.name for c in found if c.kind == "network"]
    if networks:
        raise ConfigError(
            f"the options of the network {networks[0]} changed: Docker cannot change a network in place, and "
            "making it again would cut the live color off it: give the changed network a new name in the "
            "compose file (a new network is attached to the running containers first)"
        )
    recreated = [c.name for c in found if c.kind == "service" and c.how == "recreate"]
    if recreated and profile in ("staging", "production") and not yes:
        data = (
            f" ({database} after a verified backup; its clients lose it while it restarts)"
            if database in recreated
            else ""
        )
        raise ConfigError(
            f"applying this recreates {', '.join(recreated)}{data} on {profile}: run again with --yes"
        )


def attach_networks(settings: Settings, services: list[str]) -> list[str]:
    """Make the networks the contract gives `services` (the live color's copies, the
    shared services about to be recreated) that their running containers are not on yet,
    and attach them under their compose names: a shared service moving onto such a network
    is still reached by the live color, and reached before it moves (its backup). Returns
    `service network` for each attached."""
    rendered = render.compose(settings.app)
    networks = rendered.get("networks") or {}
    # compose makes what they lack; it never recreates a container with --no-recreate
    runner.run(
        compose.compose_cmd(
            settings, "up", "--no-start", "--no-recreate", "--no-deps", "--no-build", *services
        ),
        env=compose.compose_env(settings, facts.running_versions(facts.service_states(settings))),
        what="docker compose up --no-start",
    )
    attached = []
    for service in services:
        name = facts.container(settings, service)
        try:
            have = {n.name for n in sockets.service_networks(settings, service)}
        except CommandError:
            continue  # not running: it starts with its networks
        for key in render.network_map(rendered["services"][service]):
            docker_name = (networks.get(key) or {}).get("name") or f"{settings.project}_{key}"
            if docker_name not in have:
                runner.run(
                    [
                        "docker",
                        "network",
                        "connect",
                        "--alias",
                        service,
                        "--alias",
                        name,
                        docker_name,
                        name,
                    ],
                    env=settings.docker_env(),
                    what=f"attaching {service} to the network {key}",
                )
                attached.append(f"{service} {key}")
    return attached


def plan_lines(found: list[Change]) -> list[str]:
    """The plan as `invoke apply --plan` prints it."""
    if not found:
        return [
            "nothing to apply: what runs beside the colors is what the contract and the settings say"
        ]
    return [f"-- {str(c).replace(' would be ', ': ', 1)}" for c in found]


def plan(settings: Settings) -> list[str]:
    """What `invoke apply` would change on a running stack, as lines (`--plan`)."""
    active = edge.read_active(settings)
    if active is None:
        return ["no color is live yet: `invoke up` starts the stack"]
    versions = facts.running_versions(facts.service_states(settings))
    return plan_lines(
        changes(
            settings,
            other(active.color),
            versions,
            bool(edge.read_database_record(settings).get("retired")),
        )
    )


@dataclass(frozen=True)
class Beside:
    """What `up` on a running stack does beside its live color, decided before anything
    runs (`beside` refuses what cannot be applied safely): the live color (and what is
    recreated) attached to new networks; when the database is recreated, a verified
    backup first (unless it holds nothing yet, which backup_database asks once the
    networks are attached), and its clients' requests held at the edge while it
    restarts, then passed on."""

    live: str
    found: tuple[Change, ...] = ()
    attach: bool = False
    backup: bool = False
    hold: str = ""  # the database service that is recreated, or ""

    @property
    def recreated(self) -> list[str]:
        return [c.name for c in self.found if c.kind == "service" and c.how == "recreate"]


def beside(settings: Settings, live: str, yes: bool = False) -> Beside:
    """Read what `up` would change beside the `live` color, and refuse what cannot be
    applied safely (or needs --yes), before anything runs."""
    versions = facts.running_versions(facts.service_states(settings))
    found = changes(
        settings, other(live), versions, bool(edge.read_database_record(settings).get("retired"))
    )
    database = settings.app.database.service if settings.app.postgres else None
    check(found, settings.profile, yes, database)
    for line in plan_lines(found):
        runner.say(line)
    recreated = [c.name for c in found if c.kind == "service" and c.how == "recreate"]
    hold = database if database and database in recreated else ""
    return Beside(live, tuple(found), any(c.kind == "service" for c in found), bool(hold), hold)


# --- down and scale ---------------------------------------------------------------------


def check_down(settings: Settings, volumes: bool, yes: bool) -> None:
    """`down --volumes` deletes the database, the backups on the host, the certificates,
    the history and the lock: on staging and production only with `yes`."""
    if volumes and settings.profile in STRICT_PROFILES and not yes:
        raise BadInput(
            f"`down --volumes` deletes the {settings.profile} database, its backups on the host, its certificates and "
            "its history: add --yes (first, `invoke db.backup --copy` keeps a backup off the host)"
        )


def down(settings: Settings, volumes: bool = False, yes: bool = False) -> None:
    """`invoke down` (check_down first), never beside a release: while the edge runs, the
    release lock is taken first (a holder refuses it) and given back just before the
    edge, which keeps the lock in its volume, is removed (a lock left there would stop
    the next `up`)."""
    check_down(settings, volumes, yes)
    if facts.edge_down(settings) is None:
        with lock(settings, "down"):
            pass
    with runner.step("removing the stack" + (" and its volumes" if volumes else " (volumes kept)")):
        stack.down(settings, volumes=volumes)


def scale(settings: Settings, service: str, count: int) -> str:
    """The live color's copy of `service` run by `count` tasks (a Swarm only), under the
    release lock and recorded; the next color to start gets as many. A scale that does
    not converge goes back to the count it had (SCALE_STEPS). Returns the copy."""
    if not targets.of(settings).scales:
        raise ConfigError(
            "`invoke scale` needs a Swarm (COLORGATE_TARGET=swarm): one engine runs one container per service"
        )
    if service not in settings.app.colored:
        raise BadInput(
            f"unknown service {service!r}: scale one of the app's colored services: {', '.join(settings.app.colored)}"
        )
    with lock(settings, "scale"):
        active = edge.read_active(settings)
        if active is None:
            raise StackError("no color is live yet: start the stack with `invoke up`")
        do = Scaling(settings, settings.app.copy_name(service, active.color), count)
        record = Record(
            "scale",
            active.color,
            active.color,
            active.version,
            active.version,
            detail=f"{do.copy}: {do.before} -> {count} replicas",
        )
        with (
            recorded(settings, record),
            runner.step(f"scaling {do.copy} from {do.before} to {count} replicas"),
        ):
            plans.execute(SCALE_STEPS, do, record, SCALE_UNDO)
            record.outcome = "scaled"
    return do.copy


SCALE_STEPS = ("scale", "converge")
SCALE_UNDO = plans.Undo(steps={"scale": "scale_back"})


class Scaling:
    """scale's steps on a Swarm (SCALE_STEPS orders them): the copy's tasks set to the
    new count, then waited for; undone by setting the count it had and waiting for that."""

    def __init__(self, settings: Settings, copy: str, count: int):
        self.settings, self.copy, self.count = settings, copy, count
        self.states = facts.service_states(settings)
        self.target = targets.of(settings)
        self.before = self.target.counts(settings).get(copy, 0)

    def _set(self, count: int) -> None:
        env = compose.compose_env(self.settings, facts.running_versions(self.states))
        self.target.set_counts(self.settings, env, {self.copy: count})

    def scale(self) -> None:
        self._set(self.count)

    def converge(self) -> None:
        self.target.converge(self.settings, [self.copy], self.settings.health_timeout)

    def scale_back(self) -> None:
        with runner.step(f"{self.copy} did not reach {self.count} replicas: back to {self.before}"):
            self._set(self.before)
            self.target.converge(self.settings, [self.copy], self.settings.health_timeout)
