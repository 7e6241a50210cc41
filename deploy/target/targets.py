"""The target a stack runs on: one Docker engine, driven by `docker compose`, or a Docker
Swarm's manager (`docker stack deploy` of the whole stack; swarm.py reads it and renders
for it). `of(settings)` chooses once, from COLORGATE_TARGET; what runs above asks the
target it is given, never which one it is. Both offer the same operations: start, stop
and resume services (a color's, or some of them), wait until they are ready, set how
many tasks a service runs, the dry run of a start, logs, the addresses and confinement
of what runs, and removing the stack.

The single-host target, and what both share (compose's command and variables, the
compose file rendered from the app's: on a Swarm it is for one-off containers), are
compose.py's; this module holds the Swarm target (its reads: swarm.py, its changes:
swarmstack.py) and the choice between them.
"""

from __future__ import annotations

import threading

from deploy import access
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.target import confinement, connections, facts, runner, swarm, swarmstack
from deploy.target.compose import Compose, compose_env


class Swarm(Compose):
    """A Swarm's manager: the whole stack applied at once, each colored copy a service
    whose tasks say whether its color runs (0: stopped, its spec kept)."""

    reads = facts.SWARM_READS
    checks_project = False
    renews_on_server = False
    scales = True
    restarts_in_place = False

    def check(self, settings: Settings) -> None:
        swarm.check_target(settings)

    def spread_problems(self, settings: Settings, names: list[str]) -> dict[str, str]:
        """Each service of `names` whose tasks sit on fewer active nodes than they could."""
        active = swarm.active_nodes(swarm.nodes(settings))
        return swarm.spread_problems(swarm.services(settings), names, active)

    def node_addresses(self, settings: Settings) -> set[str]:
        """Every node's address, where a port published on the Swarm would answer."""
        return set(swarm.node_addresses(swarm.nodes(settings)).values())

    def apply(
        self,
        settings: Settings,
        env: dict[str, str],
        start: str = "",
        stop: str = "",
        replicas: dict[str, int] | None = None,
        databases: dict[str, str] | None = None,
    ) -> dict[str, swarm.Service]:
        """swarmstack.apply with the stack's secret files (the database's password, each color's
        database URL: the configured one unless `databases` names another, as compose_env)
        as Swarm secrets: a volume holds them on one node only."""
        files = access.secret_files(
            settings, {c: (databases or {}).get(c, "") for c in COLORS}, database=True
        )
        return swarmstack.apply(
            settings,
            env,
            start,
            stop,
            replicas,
            {v: f for v, f in files.items() if v != "secrets-tools"},
        )

    def start(
        self,
        settings: Settings,
        names: list[str],
        env: dict[str, str],
        color: str | None = None,
        recreate: bool = False,
        grace: int = 10,
        held: list[str] | None = None,
        databases: dict[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        self.apply(
            settings,
            env,
            start=color or "",
            replicas={name: 0 for name in held or []},
            databases=databases,
        )

    def stop(
        self,
        settings: Settings,
        names: list[str],
        color: str,
        versions: dict[str, str],
        databases: dict[str, str] | None,
        grace: int | None,
        whole: bool,
    ) -> dict[str, int]:
        before = self.apply(
            settings,
            compose_env(settings, versions, databases),
            stop=color if whole else "",
            replicas=None if whole else {name: 0 for name in names},
            databases=databases,
        )
        swarmstack.wait_stopped(settings, names, 30 + (grace or 0), strict=not whole)
        return {name: s.replicas for name, s in before.items() if name in names}

    def resume(
        self,
        settings: Settings,
        names: list[str],
        env: dict[str, str],
        databases: dict[str, str] | None,
        counts: dict[str, int] | None,
    ) -> None:
        current = swarm.services(settings)
        self.apply(
            settings,
            env,
            databases=databases,
            replicas={
                name: (counts or {}).get(name) or swarmstack.resumed_count(settings, current, name)
                for name in names
            },
        )

    def wait_ready(
        self, settings: Settings, services: list[str], timeout: float, recovering: bool
    ) -> dict[str, facts.ServiceState]:
        """A task is running once healthy: the Swarm restarts those that fail."""
        swarmstack.wait_converged(settings, services, timeout)
        return facts.service_states(settings)

    def counts(self, settings: Settings) -> dict[str, int]:
        return {name: service.replicas for name, service in swarm.services(settings).items()}

    def set_counts(self, settings: Settings, env: dict[str, str], counts: dict[str, int]) -> None:
        self.apply(settings, env, replicas=counts)

    def converge(self, settings: Settings, names: list[str], timeout: float) -> None:
        swarmstack.wait_converged(settings, names, timeout)

    def retire(self, settings: Settings, copies: list[str], service: str) -> None:
        """At 0 tasks, which later commands keep (swarmstack.replicas_for)."""
        self.set_counts(
            settings, compose_env(settings, {}), {name: 0 for name in [*copies, service]}
        )

    def unretire(
        self, settings: Settings, copies: list[str], service: str, counts: dict[str, int]
    ) -> None:
        self.set_counts(
            settings,
            compose_env(settings, {}),
            {name: counts.get(name, 1) for name in [*copies, service]},
        )

    def dry_run(
        self, settings: Settings, services: list[str], versions: dict[str, str]
    ) -> dict[str, str]:
        return {}  # the stack is applied as a whole: nothing beside a color is started alone

    def one_off_exists(
        self, settings: Settings, states: dict, service: str, container: str
    ) -> bool:
        return bool(
            connections.engine(
                settings.docker_host, "containers", all=True, filters={"name": f"^/?{container}$"}
            )
        )

    def addresses(self, settings: Settings, color: str) -> dict[str, str]:
        """Of every task running the service's current spec, on any node."""
        current = swarm.services(settings)
        return {
            address: name
            for name in settings.app.color_services(color)
            if name in current
            for address in current[name].addresses
        }

    def confinements(
        self, settings: Settings, services: list[str]
    ) -> dict[str, confinement.Confinement]:
        """Of each service (at 0 tasks too, as a created container), as it says its tasks
        run, and no-new-privileges as the engines apply it: each node's engine sets it for
        every container (`dockerd --no-new-privileges`, as server.setup does), seen in the
        edge's task on the manager."""
        current, locked = swarm.services(settings), confinement.no_new_privs(settings, "edge")
        out = {}
        for name in services:
            spec = current[name].spec if name in current else None
            if spec is not None:
                user = spec.get("User") or confinement.image_user(settings, spec.get("Image") or "")
                out[name] = confinement.of_service(name, spec, user, locked)
        return out

    def logs(
        self, settings: Settings, service: str | None, known: list[str], follow: bool, tail: int
    ) -> None:
        """One `docker service logs` a service: in turn, or side by side when they follow."""
        runs = [
            threading.Thread(
                target=runner.run,
                args=(self._logs_cmd(settings, name, follow, tail),),
                daemon=True,
                kwargs={"env": settings.docker_env(), "capture": False, "check": False},
            )
            for name in ([service] if service else known)
        ]
        for run in runs:
            run.start()
            if not follow:
                run.join()
        for run in runs:
            run.join()

    @staticmethod
    def _logs_cmd(settings: Settings, service: str, follow: bool, tail: int) -> list[str]:
        return [
            "docker",
            "service",
            "logs",
            "--timestamps",
            "--tail",
            str(tail),
            *(["--follow"] if follow else []),
            swarm.service_name(settings, service),
        ]

    def down(self, settings: Settings, volumes: bool) -> None:
        self.reads.forget_volumes(settings)
        swarmstack.remove(settings, volumes)

    def tear_down(self, settings: Settings) -> None:
        swarmstack.remove(settings)

    def destroy(self, settings: Settings) -> None:
        swarmstack.remove(settings, volumes=True)
        self.reads.forget_volumes(settings)


COMPOSE, SWARM = Compose(), Swarm()


def of(settings: Settings) -> Compose:
    """The target of these settings (COLORGATE_TARGET): the one whose reads facts.reads
    chose for them."""
    chosen = facts.reads(settings)
    return next(t for t in (COMPOSE, SWARM) if t.reads is chosen)
