"""A Swarm's stack changed: the stack file deployed with its secrets (`docker stack deploy`),
replicas per color, waits until the services converge or stop, and its removal."""

from __future__ import annotations

import hashlib
import hmac
import time
from secrets import token_hex

import yaml

from deploy import registry, render, swarmfile
from deploy.colors import COLORS, other
from deploy.config import Settings
from deploy.errors import CommandError, StackError
from deploy.target import connections, runner
from deploy.target.swarm import (
    STACK_LABEL,
    Service,
    check_manager,
    lost_nodes,
    manager_node,
    node_addresses,
    nodes,
    running_colors,
    services,
)


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
    stack = swarmfile.render(
        settings.app,
        env,
        copies=replicas,
        secrets=secrets,
        node=node,
        encrypted=settings.swarm_encrypt == "yes",
    )
    return yaml.safe_dump(stack, sort_keys=False)


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
        for c in connections.engine(settings.docker_host, "configs", filters={"name": name})
        if c["Spec"]["Name"] == name
    ]
    if found:
        return found[0]["Spec"]["Labels"][label]
    salt = token_hex(16)
    connections.engine(
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
        for s in connections.engine(
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
                connections.engine(
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
    for found in connections.engine(
        settings.docker_host, "secrets", filters={"label": f"{STACK_LABEL}={settings.project}"}
    ):
        if found["Spec"]["Name"] not in keep:
            try:
                connections.engine(settings.docker_host, "remove_secret", found["ID"])
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
        with registry.registry_session(settings) as session:
            runner.run(
                deploy_cmd(settings), input=text, env={**env, **session}, what="docker stack deploy"
            )
    else:
        runner.run(deploy_cmd(settings), input=text, env=env, what="docker stack deploy")
    prune_secrets(settings, {name for contents in secrets.values() for name in contents.values()})
    return current


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
        left = connections.engine(
            settings.docker_host,
            "containers",
            all=True,
            filters={"label": f"{STACK_LABEL}={settings.project}"},
        )
        nets = connections.engine(
            settings.docker_host, "networks", filters={"label": f"{STACK_LABEL}={settings.project}"}
        )
        if not left and not nets:
            break
        time.sleep(0.5)
    if volumes:  # the stack's, and those its one-off containers (kept migrations: removed first) and secret files use
        for one in connections.engine(
            settings.docker_host,
            "containers",
            all=True,
            filters={"label": f"com.docker.compose.project={settings.project}"},
        ):
            connections.engine(
                settings.docker_host,
                "remove_container",
                one["Id"],
                force=True,
                what="removing a one-off container",
            )
        for label in (STACK_LABEL, "com.docker.compose.project"):
            for volume in (
                connections.engine(
                    settings.docker_host,
                    "volumes",
                    filters={"label": f"{label}={settings.project}"},
                ).get("Volumes")
                or []
            ):
                connections.engine(
                    settings.docker_host,
                    "remove_volume",
                    volume["Name"],
                    force=True,
                    what="removing a volume",
                )


def ensure_volumes(settings: Settings, volumes: list[str]) -> None:
    """The stack's volumes on the manager, made (as compose labels its own) when missing:
    one-off containers use them as they are there (swarmfile.one_offs_on_swarm)."""
    found = {
        v["Name"] for v in connections.engine(settings.docker_host, "volumes").get("Volumes") or []
    }
    for volume in volumes:
        if f"{settings.project}_{volume}" not in found:
            connections.engine(
                settings.docker_host,
                "create_volume",
                f"{settings.project}_{volume}",
                what="making a volume",
                labels={
                    "com.docker.compose.project": settings.project,
                    "com.docker.compose.volume": volume,
                },
            )
