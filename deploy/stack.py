"""The stack's parts, whichever target it runs on (deploy.target.targets): start and stop
services and colors, wait until they are ready and healthy, build and pull images, take
the stack down (`up`'s order is apply.start_stack's). What runs on the target is read by
deploy.target.facts.
"""

from __future__ import annotations

import shutil
import time

import tenacity

from deploy import access, bases, bootstrap, edge, images, registry
from deploy.config import Settings
from deploy.edge import probes
from deploy.errors import ColorgateError, CommandError, PortInUse, StackError
from deploy.target import compose, facts, runner, targets


def infra_services(settings: Settings, retired: bool = False) -> list[str]:
    """What runs once for both colors: the app's shared services and the edge (without
    the app's own database once `db.retire-local` retired it)."""
    db = settings.app.database.service if settings.app.database else None
    return [*(s for s in settings.app.shared if not (retired and s == db)), "edge"]


def wait_ready(
    settings: Settings, services: list[str], timeout: float | None = None, recovering: bool = False
) -> dict[str, facts.ServiceState]:
    """Wait (bounded) until every service is running and healthy (Target.wait_ready):
    stops early, naming the service, when one exits or its health check fails; with
    `recovering` (containers that ran while their database was still empty), an
    unhealthy service is waited for until it turns healthy."""
    return targets.of(settings).wait_ready(
        settings, services, settings.health_timeout if timeout is None else timeout, recovering
    )


def wait_healthy(settings: Settings, color: str, timeout: float | None = None) -> None:
    """Wait (bounded) until every health check of `color` passes, asked from the edge;
    polled quickly, so a release waits only as long as the app takes to get ready."""
    timeout = settings.health_timeout if timeout is None else timeout
    last: dict[str, str | None] = {}

    @tenacity.retry(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_exponential(multiplier=0.1, max=1),
        retry=tenacity.retry_if_result(bool),
    )
    def poll() -> list[str]:
        last.update(probes.candidate_health(settings, color))
        return [s for s, problem in last.items() if problem]

    try:
        poll()
    except tenacity.RetryError:
        failing = {s: p for s, p in last.items() if p}
        first = next(iter(failing))
        raise StackError(
            f"{settings.app.copy_name(first, color)} failed its health check for {timeout}s "
            f"({settings.app.health[first].path}: {failing[first]}): see `invoke logs {settings.app.copy_name(first, color)}`"
        ) from None


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
    runner.run(
        compose.compose_cmd(settings, "build", *buildable),
        env=compose.compose_env(settings, versions),
        what="docker compose build",
    )
    for service in buildable:
        copy = app.split_copy(service)
        if copy:
            name, color = copy
            runner.run(
                images.tag_cmd(
                    images.app_tag(settings, name, versions[color]),
                    images.app_tag(settings, name, "latest"),
                ),
                env=settings.docker_env(),
            )


def release_images_exist(settings: Settings, version: str) -> bool:
    return all(
        bases.image_exists(settings, images.app_tag(settings, name, version))
        for name in images.release_images(settings.app)
    )


def ensure_release_images(
    settings: Settings,
    color: str,
    versions: dict[str, str],
    force: bool = False,
    release: bool = False,
) -> None:
    """`color`'s images at its version in `versions`, unless the target has them (or
    `force`): pulled from the registry when there is one, made on this machine and sent
    when streaming, else built by the target's engine. For a `release`, the registry is
    asked even when the target holds the tag, which may be another build's (a pull of
    an image it has costs one manifest request); never for a color that runs (`up`)."""
    version = versions[color]
    if (
        not force
        and release_images_exist(settings, version)
        and not (release and settings.image_source == "registry")
    ):
        return
    if settings.image_source == "registry":
        with registry.registry_session(settings) as env:
            registry.pull(settings, images.release_images(settings.app), version, env)
        return
    if force or not release_images_exist(settings.builder, version):
        # those older than COLORGATE_BASE_MAX_AGE first: Debian's updates
        bootstrap.fresh_bases(settings.builder)
        build(settings.builder, settings.app.color_services(color), versions)
    if settings.image_source == "stream":
        refs = [
            images.app_tag(settings, name, tag)
            for name in images.release_images(settings.app)
            for tag in (version, "latest")
        ]
        registry.send(settings, refs)


def ensure_infra_images(settings: Settings, versions: dict[str, str], version: str | None) -> None:
    """Colorgate's own images and the app's shared ones it builds: pulled at `version`
    (else latest) from the registry when there is one, else built (a no-op when
    unchanged), and sent to the target when streaming."""
    names = images.infra_images(settings.app)
    if settings.image_source == "registry":
        with registry.registry_session(settings) as env:
            registry.pull(settings, names, version or "latest", env, as_latest=True)
        return
    # all of them: `compose run` cannot build on the target then
    if settings.image_source == "stream":
        build(settings.builder, list(names), versions)
        registry.send(settings, [images.app_tag(settings, name, "latest") for name in names])
    else:
        # certbot is built when first used (tls.init); dbtools only for an app with PostgreSQL
        build(
            settings,
            [n for n in names if n != "certbot" and (n != "dbtools" or settings.app.postgres)],
            versions,
        )


def start(
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
    """Start `names` (`recreate`: anew, the old ones given `grace` seconds; `keep`:
    never, only started if stopped), and create `held` without starting them (db.move's
    workers); a `color`'s alone, without what it depends on (that runs already:
    apply.changes). On a Swarm the whole stack is applied, with `color` running beside
    the colors that run and `held` at 0 tasks; `databases` as compose_env's, for the
    secret files."""
    targets.of(settings).start(settings, names, env, color, recreate, grace, held, databases, keep)


def down(settings: Settings, volumes: bool = False) -> None:
    """Remove the stack's containers and networks; volumes (data, certificates,
    routing state) are kept unless `volumes`."""
    access.forget(settings)  # the secret files go with the volumes
    targets.of(settings).down(settings, volumes)


def destroy(settings: Settings) -> None:
    """Remove everything of this project: containers, networks, volumes, the image
    tags under its image prefix and its rendered compose file. For throwaway stacks
    (tests, benchmarks) only."""
    access.forget(settings)
    targets.of(settings).destroy(settings)
    shutil.rmtree(settings.compose_file.parent, ignore_errors=True)
    # the target's tags, and, for another engine, those made here to push or send to it
    for engine in [settings.docker_env(), *([{}] if settings.docker_host else [])]:
        tags = runner.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
            env=engine,
            check=False,
        ).stdout.split()
        mine = [t for t in tags if t.startswith(settings.image_prefix)]
        if mine:
            runner.run(["docker", "image", "rm", *mine], env=engine, check=False)


def migrations_container(settings: Settings, color: str) -> str:
    return f"{settings.project}-migrations-{color}"


def stop_color(
    settings: Settings,
    color: str,
    versions: dict[str, str],
    drain: bool = True,
    services: list[str] | None = None,
    databases: dict[str, str] | None = None,
) -> dict[str, int]:
    """Stop a color's containers (or those of `services`), kept with their logs for
    diagnosis. With `drain`, first wait until the edge has no request in flight to it,
    and give its containers what is left of COLORGATE_DRAIN_SECONDS to stop: a stream
    still open is closed within the bound. On a Swarm, their services at 0 tasks (a
    color's own or, of `services`, theirs: the rest keeps running), waiting until their
    tasks have stopped; returns how many each of `services` had there (for `resume`)."""
    names = settings.app.color_services(color) if services is None else services
    if not names:
        return {}
    grace = drain_color(settings, color) if drain else None
    return targets.of(settings).stop(
        settings, names, color, versions, databases, grace, whole=services is None
    )


def resume(
    settings: Settings,
    names: list[str],
    versions: dict[str, str],
    databases: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
    wait: bool = True,
) -> None:
    """Start again the stopped services `names` of a running color (db.move's workers):
    on a Swarm with `counts` tasks each, else as a copy that starts (swarm.resumed_count).
    With `wait`, until they run."""
    targets.of(settings).resume(
        settings, names, compose.compose_env(settings, versions, databases), databases, counts
    )
    if wait:
        wait_ready(settings, names)


def drain_color(settings: Settings, color: str) -> int:
    """Wait (within the drain bound) until the edge has no request in flight to
    `color`; returns the seconds left of the bound (at least 1), the containers' grace
    period when they are stopped or replaced next."""
    started = time.monotonic()
    left = edge.drain(settings, color)
    if left:
        runner.say(
            f"-- {left} request(s) to {color} still open at the drain bound "
            f"({settings.drain_seconds} s, COLORGATE_DRAIN_SECONDS): closing them"
        )
    return max(1, round(settings.drain_seconds - (time.monotonic() - started)))
