"""The single-host target: one Docker engine driven by `docker compose` (its command, its
variables, the rendered file it reads), each operation of the target interface
(deploy.target.targets) done with compose."""

from __future__ import annotations

import tenacity

from deploy import bases, render
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.errors import ConfigError, StackError
from deploy.target import confinement, facts, runner
from deploy.urls import app_url, url_parts

# One-off services (dbtools, certbot) sit in a compose profile; naming it makes `down`
# see them and their volumes (backups, letsencrypt).
ALL_PROFILES = ("--profile", "tools")


def compose_cmd(settings: Settings, *args: str) -> list[str]:
    """`docker compose` for this settings' project, on the rendered compose file, with the
    app's directory as the project directory (its build contexts are relative to it)."""
    write_rendered(settings)
    return [
        "docker",
        "compose",
        "--project-name",
        settings.project,
        "--project-directory",
        str(settings.app_dir),
        "--file",
        str(settings.compose_file),
        *args,
    ]


def write_rendered(settings: Settings) -> None:
    """Write the compose file rendered from the app's (only when it changed). It holds
    no secret: those stay ${...} variables that compose fills in from compose_env."""
    text = render.dump(
        facts.reads(settings).rendered(settings, render.compose(settings.app)), settings.app.file
    )
    path = settings.compose_file
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def compose_env(
    settings: Settings, versions: dict[str, str], databases: dict[str, str] | None = None
) -> dict[str, str]:
    """Compose variables, with each color's version pinned so no command recreates
    a color with an image it was not running, and each color's database URL (the
    configured one unless `databases` names another; db.move does). Holds secrets."""
    env = {
        **settings.compose_env(),
        **bases.base_build_args(settings),
        "CG_DBTOOLS_BASE": bases.BASES["postgres"].tag(settings.base_source),
    }
    for color, version in versions.items():
        env[f"COLORGATE_{color.upper()}_VERSION"] = version
    db = settings.app.database
    for color in COLORS:
        url = (databases or {}).get(color, settings.app_database_url())
        env[render.database_var(color)] = app_url(
            url, db.scheme if db else "postgresql", managed=url != settings.local_database_url()
        )
        env[render.database_label_var(color)] = facts.database_shown(settings, url)
        for part, value in url_parts(url).items() if db and db.parts else ():
            env[render.database_var(color, part)] = value
    return env


class _NotYet(Exception):
    pass


class Compose:
    """One engine: compose starts, stops and removes the containers it names."""

    reads = facts.COMPOSE_READS  # how it is read
    # a compose project of that name may be another app's (access.check_project)
    checks_project = True
    # the renewer runs beside the edge (a Swarm's edge is renewed by tls.renew)
    renews_on_server = True
    scales = False  # one container per service
    # a container that crashes is restarted in place (a Swarm replaces the task)
    restarts_in_place = True

    def check(self, settings: Settings) -> None:
        """Before a command acts: nothing beyond the engine bootstrap checked."""

    def spread_problems(self, settings: Settings, names: list[str]) -> dict[str, str]:
        """The services of `names` that run on fewer nodes than they could: none on one
        host, which is one node."""
        return {}

    def node_addresses(self, settings: Settings) -> set[str]:
        """The addresses of the target's nodes beyond the edge's: none on one host."""
        return set()

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
        again = (
            ["--force-recreate", "--timeout", str(grace)]
            if recreate
            else ["--no-recreate"]
            if keep
            else []
        )
        # a color never starts, recreates or reconnects what runs beside it
        alone = ["--no-deps"] if color else []
        for group, how in ((names, "--detach"), (held or [], "--no-start")):
            if group:
                runner.run(
                    compose_cmd(settings, "up", how, "--no-build", *alone, *again, *group),
                    env=env,
                    what="docker compose up",
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
        timeout = ["--timeout", str(grace)] if grace is not None else []
        runner.run(
            compose_cmd(settings, "stop", *timeout, *names),
            env=compose_env(settings, versions),
            check=False,
        )
        return {}

    def resume(
        self,
        settings: Settings,
        names: list[str],
        env: dict[str, str],
        databases: dict[str, str] | None,
        counts: dict[str, int] | None,
    ) -> None:
        runner.run(compose_cmd(settings, "start", *names), env=env, what="docker compose start")

    def wait_ready(
        self, settings: Settings, services: list[str], timeout: float, recovering: bool
    ) -> dict[str, facts.ServiceState]:
        """By the engine's check, or, while the engine has not checked yet (it checks five
        minutes apart), by running the container's health check here, actively. Stops
        early, naming the service, when one exits or its health check fails; with
        `recovering`, an unhealthy service is waited for until it turns healthy."""

        @tenacity.retry(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_exponential(multiplier=0.25, max=2),
            retry=tenacity.retry_if_exception_type(_NotYet),
            reraise=True,
        )
        def poll() -> dict[str, facts.ServiceState]:
            states = facts.service_states(settings)
            for name in services:
                s = states.get(name)
                if s and (
                    s.state in ("exited", "dead") or (s.health == "unhealthy" and not recovering)
                ):
                    what = "exited" if s.state in ("exited", "dead") else "failed its health check"
                    raise StackError(f"{name} {what}: see `invoke logs {name}`")
            pending = [
                n
                for n in services
                if n not in states
                or not (
                    states[n].ready
                    or (states[n].state == "running" and facts.passes_healthcheck(settings, n))
                )
            ]
            if pending:
                raise _NotYet(pending)
            return states

        try:
            return poll()
        except _NotYet as exc:
            raise StackError(
                f"timed out after {timeout}s waiting for {', '.join(exc.args[0])} to become healthy: "
                "see `invoke logs SERVICE`"
            ) from None

    def counts(self, settings: Settings) -> dict[str, int]:
        """How many tasks each service runs (a Swarm's): none here."""
        return {}

    def set_counts(self, settings: Settings, env: dict[str, str], counts: dict[str, int]) -> None:
        raise ConfigError(
            "`invoke scale` needs a Swarm (COLORGATE_TARGET=swarm): one engine runs one container per service"
        )

    def converge(self, settings: Settings, names: list[str], timeout: float) -> None:
        self.wait_ready(settings, names, timeout, recovering=False)

    def retire(self, settings: Settings, copies: list[str], service: str) -> None:
        """db.retire-local: the `copies` stopped (kept), the database `service` removed (its volume kept)."""
        env = compose_env(settings, {})
        if copies:
            runner.run(compose_cmd(settings, "stop", *copies), env=env, what="docker compose stop")
        runner.run(
            compose_cmd(settings, "rm", "--stop", "--force", service),
            env=env,
            what="removing the local PostgreSQL container",
        )

    def unretire(
        self, settings: Settings, copies: list[str], service: str, counts: dict[str, int]
    ) -> None:
        env = compose_env(settings, {})
        runner.run(
            compose_cmd(settings, "up", "--detach", "--no-deps", "--no-build", service),
            env=env,
            what="starting the local PostgreSQL again",
        )
        if copies:
            runner.run(
                compose_cmd(settings, "start", *copies), env=env, what="docker compose start"
            )

    def dry_run(
        self, settings: Settings, services: list[str], versions: dict[str, str]
    ) -> dict[str, str]:
        """What starting `services` would do to each, as compose's own dry run decides it."""
        proc = runner.run(
            compose_cmd(
                settings,
                "--dry-run",
                "up",
                "--detach",
                "--no-build",
                "--no-deps",
                "--pull",
                "never",
                *services,
            ),
            env=compose_env(settings, versions),
            what="docker compose up --dry-run",
        )
        return facts.parse_dry_run(proc.stderr + proc.stdout, settings.project)

    def one_off_exists(
        self, settings: Settings, states: dict, service: str, container: str
    ) -> bool:
        return service in states  # compose lists its one-off services' containers too

    def addresses(self, settings: Settings, color: str) -> dict[str, str]:
        """IP address -> service, for every container of `color` (on every network)."""
        out = {}
        for name in settings.app.color_services(color):
            found = facts.inspected(settings, facts.container(settings, name))
            for net in (
                ((found or {}).get("NetworkSettings") or {}).get("Networks") or {}
            ).values():
                if net.get("IPAddress"):
                    out[net["IPAddress"]] = name
        return out

    def confinements(
        self, settings: Settings, services: list[str]
    ) -> dict[str, confinement.Confinement]:
        """Of each of `services` that has a container (running or not: db.move's workers
        are created only)."""
        found = facts.parallel(
            lambda n: facts.inspected(settings, facts.container(settings, n)), services
        )
        return {
            name: confinement.of_container(name, c)
            for name, c in zip(services, found, strict=True)
            if c is not None
        }

    def logs(
        self, settings: Settings, service: str | None, known: list[str], follow: bool, tail: int
    ) -> None:
        """`service`'s logs, or (None) all of the stack's `known` services'."""
        args = (
            ["logs", "--tail", str(tail)]
            + (["--follow"] if follow else [])
            + ([service] if service else [])
        )
        runner.run(
            compose_cmd(settings, *args),
            env=settings.compose_env(),
            capture=False,
            what="docker compose logs",
        )

    def down(self, settings: Settings, volumes: bool) -> None:
        args = [*ALL_PROFILES, "down", "--remove-orphans", "--timeout", "10"] + (
            ["--volumes"] if volumes else []
        )
        runner.run(
            compose_cmd(settings, *args), env=settings.compose_env(), what="docker compose down"
        )
        self._remove_left_networks(settings)

    def tear_down(self, settings: Settings) -> None:
        """What a first `up` that failed started (volumes kept)."""
        runner.run(
            compose_cmd(settings, "down", "--remove-orphans"),
            env=settings.compose_env(),
            check=False,
        )

    def destroy(self, settings: Settings) -> None:
        runner.run(
            compose_cmd(
                settings, *ALL_PROFILES, "down", "--volumes", "--remove-orphans", "--timeout", "3"
            ),
            env=settings.compose_env(),
            check=False,
        )
        self._remove_left_networks(settings)

    @staticmethod
    def _remove_left_networks(settings: Settings) -> None:
        """The project's networks compose down no longer knows: those an earlier contract
        named (a network renamed, a database moved onto a new one by `invoke apply`)."""
        left = runner.run(
            [
                "docker",
                "network",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={settings.project}",
            ],
            env=settings.docker_env(),
            check=False,
        ).stdout.split()
        if left:
            runner.run(
                ["docker", "network", "rm", *left],
                env=settings.docker_env(),
                check=False,
                what="removing the project's networks",
            )
