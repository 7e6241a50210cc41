"""The compose stack's parts: start and stop services and colors, wait until they are
ready, build and pull images, migrate, take the stack down (`up`'s order is
apply.start_stack's).

Commands are built by pure functions (`compose_cmd`, `compose_env`) and executed by
deploy.runner; what runs on the target is read by deploy.facts.
"""

from __future__ import annotations

import shutil
import time

import tenacity

from deploy import access, bootstrap, edge, facts, images, probes, render, runner, swarm
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.keys import app_url, url_parts
from deploy.errors import ColorgateError, CommandError, PortInUse, StackError

# One-off services (dbtools, certbot) sit in a compose profile; naming it makes `down`
# see them and their volumes (backups, letsencrypt).
ALL_PROFILES = ("--profile", "tools")


_volumes_made: set[tuple[str, str]] = set()


def write_rendered(settings: Settings) -> None:
    """Write the compose file rendered from the app's (only when it changed). It holds
    no secret: those stay ${...} variables that compose fills in from compose_env. On a
    Swarm it is for one-off containers, on the stack's networks and volumes there."""
    rendered = render.compose(settings.app)
    if settings.swarm:
        if (settings.docker_host, settings.project) not in _volumes_made:
            swarm.ensure_volumes(settings, list(rendered["volumes"]))
            _volumes_made.add((settings.docker_host, settings.project))
        rendered = render.one_offs_on_swarm(rendered, settings.project)
    text = render.dump(rendered, settings.app.file)
    path = settings.compose_file
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def compose_cmd(settings: Settings, *args: str) -> list[str]:
    """`docker compose` for this settings' project, on the rendered compose file, with the
    app's directory as the project directory (its build contexts are relative to it)."""
    write_rendered(settings)
    return [
        "docker", "compose",
        "--project-name", settings.project,
        "--project-directory", str(settings.app_dir),
        "--file", str(settings.compose_file),
        *args,
    ]


def infra_services(settings: Settings, retired: bool = False) -> list[str]:
    """What runs once for both colors: the app's shared services and the edge (without
    the app's own database once `db.retire-local` retired it)."""
    db = settings.app.database.service if settings.app.database else None
    return [*(s for s in settings.app.shared if not (retired and s == db)), "edge"]


def compose_env(settings: Settings, versions: dict[str, str], databases: dict[str, str] | None = None) -> dict[str, str]:
    """Compose variables, with each color's version pinned so no command recreates
    a color with an image it was not running, and each color's database URL (the
    configured one unless `databases` names another; db.move does). Holds secrets."""
    env = {**settings.compose_env(), **images.base_build_args(settings),
           "CG_DBTOOLS_BASE": images.BASES["postgres"].tag(settings.base_source)}
    for color, version in versions.items():
        env[f"COLORGATE_{color.upper()}_VERSION"] = version
    db = settings.app.database
    for color in COLORS:
        url = (databases or {}).get(color, settings.app_database_url())
        env[render.database_var(color)] = app_url(url, db.scheme if db else "postgresql", managed=url != settings.local_database_url())
        env[render.database_label_var(color)] = facts.database_shown(settings, url)
        for part, value in (url_parts(url).items() if db and db.parts else ()):
            env[render.database_var(color, part)] = value
    return env


class _NotYet(Exception):
    pass


def wait_ready(settings: Settings, services: list[str], timeout: float | None = None,
               recovering: bool = False) -> dict[str, facts.ServiceState]:
    """Wait (bounded) until every service is running and healthy: by the engine's
    check, or, while the engine has not checked yet (it checks five minutes apart), by
    running the container's health check here, actively.

    Stops early, naming the service, when one exits or its health check fails; with
    `recovering` (containers that ran while their database was still empty), an
    unhealthy service is waited for until it turns healthy.
    """
    timeout = settings.health_timeout if timeout is None else timeout
    if settings.swarm:  # a task is running once healthy: the Swarm restarts those that fail
        swarm.wait_converged(settings, services, timeout)
        return facts.service_states(settings)

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
            if s and (s.state in ("exited", "dead") or (s.health == "unhealthy" and not recovering)):
                what = "exited" if s.state in ("exited", "dead") else "failed its health check"
                raise StackError(f"{name} {what}: see `invoke logs {name}`")
        pending = [n for n in services if n not in states or not (
            states[n].ready or (states[n].state == "running" and facts.passes_healthcheck(settings, n)))]
        if pending:
            raise _NotYet(pending)
        return states

    try:
        return poll()
    except _NotYet as exc:
        raise StackError(
            f"timed out after {timeout}s waiting for {', '.join(exc.args[0])} to become healthy: see `invoke logs SERVICE`"
        ) from None


def wait_healthy(settings: Settings, color: str, timeout: float | None = None) -> None:
    """Wait (bounded) until every health check of `color` passes, asked from the edge;
    polled quickly, so a release waits only as long as the app takes to get ready."""
    timeout = settings.health_timeout if timeout is None else timeout
    last: dict[str, str | None] = {}

    @tenacity.retry(stop=tenacity.stop_after_delay(timeout), wait=tenacity.wait_exponential(multiplier=0.1, max=1),
                    retry=tenacity.retry_if_result(bool))
    def poll() -> list[str]:
        last.update(probes.candidate_health(settings, color))
        return [s for s, problem in last.items() if problem]

    try:
        poll()
    except tenacity.RetryError:
        failing = {s: p for s, p in last.items() if p}
        first = next(iter(failing))
        raise StackError(f"{settings.app.copy_name(first, color)} failed its health check for {timeout}s "
                         f"({settings.app.health[first].path}: {failing[first]}): see `invoke logs {settings.app.copy_name(first, color)}`") from None


def explain_compose_error(settings: Settings, exc: CommandError) -> ColorgateError:
    text = exc.stderr + exc.stdout
    if "port is already allocated" in text or "address already in use" in text:
        return PortInUse(
            f"a port of the edge ({settings.http_port} or {settings.https_port} on {settings.bind}) is already in use: "
            f"free it or change COLORGATE_HTTP_PORT/COLORGATE_HTTPS_PORT in .env.{settings.profile}.local"
        )
    return exc


def build(settings: Settings, services: list[str], versions: dict[str, str]) -> None:
    """Build images for `services` (compose, BuildKit); release images also get `latest`."""
    app = settings.app
    buildable = [s for s in services if app.builds(s)]
    if not buildable:
        return
    runner.run(compose_cmd(settings, "build", *buildable), env=compose_env(settings, versions), what="docker compose build")
    for service in buildable:
        copy = app.split_copy(service)
        if copy:
            name, color = copy
            runner.run(
                images.tag_cmd(images.app_tag(settings, name, versions[color]), images.app_tag(settings, name, "latest")),
                env=settings.docker_env(),
            )


def release_images_exist(settings: Settings, version: str) -> bool:
    return all(images.image_exists(settings, images.app_tag(settings, name, version)) for name in images.release_images(settings.app))


def ensure_release_images(settings: Settings, color: str, versions: dict[str, str], force: bool = False,
                          release: bool = False) -> None:
    """`color`'s images at its version in `versions`, unless the target has them (or
    `force`): pulled from the registry when there is one, made on this machine and sent
    when streaming, else built by the target's engine. For a `release`, the registry is
    asked even when the target holds the tag, which may be another build's (a pull of
    an image it has costs one manifest request); never for a color that runs (`up`)."""
    version = versions[color]
    if not force and release_images_exist(settings, version) and not (release and settings.image_source == "registry"):
        return
    if settings.image_source == "registry":
        with images.registry_session(settings) as env:
            images.pull(settings, images.release_images(settings.app), version, env)
        return
    if force or not release_images_exist(settings.builder, version):
        bootstrap.fresh_bases(settings.builder)  # those older than COLORGATE_BASE_MAX_AGE first: Debian's updates
        build(settings.builder, settings.app.color_services(color), versions)
    if settings.image_source == "stream":
        refs = [images.app_tag(settings, name, tag) for name in images.release_images(settings.app) for tag in (version, "latest")]
        images.send(settings, refs)


def ensure_infra_images(settings: Settings, versions: dict[str, str], version: str | None) -> None:
    """Colorgate's own images and the app's shared ones it builds: pulled at `version`
    (else latest) from the registry when there is one, else built (a no-op when
    unchanged), and sent to the target when streaming."""
    names = images.infra_images(settings.app)
    if settings.image_source == "registry":
        with images.registry_session(settings) as env:
            images.pull(settings, names, version or "latest", env, as_latest=True)
        return
    if settings.image_source == "stream":  # all of them: `compose run` cannot build on the target then
        build(settings.builder, list(names), versions)
        images.send(settings, [images.app_tag(settings, name, "latest") for name in names])
    else:
        # certbot is built when first used (tls.init); dbtools only for an app with PostgreSQL
        build(settings, [n for n in names if n != "certbot" and (n != "dbtools" or settings.app.postgres)], versions)


def start(settings: Settings, names: list[str], env: dict[str, str], color: str | None = None,
          recreate: bool = False, grace: int = 10, held: list[str] | None = None,
          databases: dict[str, str] | None = None, keep: bool = False) -> None:
    """`docker compose up` of `names` (`recreate`: anew, the old ones given `grace`
    seconds; `keep`: never, only started if stopped), and of `held` created but not
    started (db.move's workers); a `color`'s alone, without what it depends on (that
    runs already: apply.changes). On a Swarm the
    whole stack is applied, with `color` running beside the colors that run and `held`
    at 0 tasks (swarm.apply); `databases` as compose_env's, for the secret files."""
    if settings.swarm:
        swarm_apply(settings, env, start=color or "", replicas={name: 0 for name in held or []}, databases=databases)
        return
    again = ["--force-recreate", "--timeout", str(grace)] if recreate else ["--no-recreate"] if keep else []
    alone = ["--no-deps"] if color else []  # a color never starts, recreates or reconnects what runs beside it
    for group, how in ((names, "--detach"), (held or [], "--no-start")):
        if group:
            runner.run(compose_cmd(settings, "up", how, "--no-build", *alone, *again, *group), env=env, what="docker compose up")


def down(settings: Settings, volumes: bool = False) -> None:
    """Remove the stack's containers and networks; volumes (data, certificates,
    routing state) are kept unless `volumes`."""
    args = [*ALL_PROFILES, "down", "--remove-orphans", "--timeout", "10"] + (["--volumes"] if volumes else [])
    access.forget(settings)  # the secret files go with the volumes
    if settings.swarm:
        _volumes_made.discard((settings.docker_host, settings.project))
        return swarm.remove(settings, volumes)
    runner.run(compose_cmd(settings, *args), env=settings.compose_env(), what="docker compose down")
    _remove_left_networks(settings)


def _remove_left_networks(settings: Settings) -> None:
    """The project's networks compose down no longer knows: those an earlier contract
    named (a network renamed, a database moved onto a new one by `invoke apply`)."""
    left = runner.run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={settings.project}"],
                      env=settings.docker_env(), check=False).stdout.split()
    if left:
        runner.run(["docker", "network", "rm", *left], env=settings.docker_env(), check=False, what="removing the project's networks")


def destroy(settings: Settings) -> None:
    """Remove everything of this project: containers, networks, volumes, the image
    tags under its image prefix and its rendered compose file. For throwaway stacks
    (tests, benchmarks) only."""
    access.forget(settings)
    if settings.swarm:
        swarm.remove(settings, volumes=True)
        _volumes_made.discard((settings.docker_host, settings.project))
    else:
        runner.run(compose_cmd(settings, *ALL_PROFILES, "down", "--volumes", "--remove-orphans", "--timeout", "3"),
                   env=settings.compose_env(), check=False)
        _remove_left_networks(settings)
    shutil.rmtree(settings.compose_file.parent, ignore_errors=True)
    # the target's tags, and, for another engine, those made here to push or send to it
    for engine in [settings.docker_env(), *([{}] if settings.docker_host else [])]:
        tags = runner.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], env=engine, check=False).stdout.split()
        mine = [t for t in tags if t.startswith(settings.image_prefix)]
        if mine:
            runner.run(["docker", "image", "rm", *mine], env=engine, check=False)


def migrations_container(settings: Settings, color: str) -> str:
    return f"{settings.project}-migrations-{color}"


def stop_color(settings: Settings, color: str, versions: dict[str, str], drain: bool = True,
               services: list[str] | None = None, databases: dict[str, str] | None = None) -> dict[str, int]:
    """Stop a color's containers (or those of `services`), kept with their logs for
    diagnosis. With `drain`, first wait until the edge has no request in flight to it,
    and give its containers what is left of COLORGATE_DRAIN_SECONDS to stop: a stream
    still open is closed within the bound. On a Swarm, their services at 0 tasks (a
    color's own or, of `services`, theirs: the rest keeps running), waiting until their
    tasks have stopped; returns how many each of `services` had there (for `resume`)."""
    names = settings.app.color_services(color) if services is None else services
    if not names:
        return {}
    drain_seconds = drain_color(settings, color) if drain else 0
    grace = ["--timeout", str(drain_seconds)] if drain else []
    if settings.swarm:
        before = swarm_apply(settings, compose_env(settings, versions, databases), stop=color if services is None else "",
                             replicas=None if services is None else {name: 0 for name in names}, databases=databases)
        swarm.wait_stopped(settings, names, 30 + drain_seconds, strict=services is not None)
        return {name: s.replicas for name, s in before.items() if name in names}
    runner.run(compose_cmd(settings, "stop", *grace, *names), env=compose_env(settings, versions), check=False)
    return {}


def resume(settings: Settings, names: list[str], versions: dict[str, str], databases: dict[str, str] | None = None,
           counts: dict[str, int] | None = None, wait: bool = True) -> None:
    """Start again the stopped services `names` of a running color (db.move's workers):
    on a Swarm with `counts` tasks each, else as a copy that starts (swarm.resumed_count).
    With `wait`, until they run."""
    env = compose_env(settings, versions, databases)
    if settings.swarm:
        current = swarm.services(settings)
        swarm_apply(settings, env, databases=databases,
                    replicas={name: (counts or {}).get(name) or swarm.resumed_count(settings, current, name) for name in names})
    else:
        runner.run(compose_cmd(settings, "start", *names), env=env, what="docker compose start")
    if wait:
        wait_ready(settings, names)


def drain_color(settings: Settings, color: str) -> int:
    """Wait (within the drain bound) until the edge has no request in flight to
    `color`; returns the seconds left of the bound (at least 1), the containers' grace
    period when they are stopped or replaced next."""
    started = time.monotonic()
    left = edge.drain(settings, color)
    if left:
        runner.say(f"-- {left} request(s) to {color} still open at the drain bound "
                   f"({settings.drain_seconds} s, COLORGATE_DRAIN_SECONDS): closing them")
    return max(1, round(settings.drain_seconds - (time.monotonic() - started)))


def swarm_apply(settings: Settings, env: dict[str, str], start: str = "", stop: str = "", replicas: dict[str, int] | None = None,
                databases: dict[str, str] | None = None) -> dict[str, swarm.Service]:
    """swarm.apply with the stack's secret files (the database's password, each color's
    database URL: the configured one unless `databases` names another, as compose_env)
    as Swarm secrets: a volume holds them on one node only."""
    files = access.secret_files(settings, {c: (databases or {}).get(c, "") for c in COLORS}, database=True)
    return swarm.apply(settings, env, start, stop, replicas, {v: f for v, f in files.items() if v != "secrets-tools"})
