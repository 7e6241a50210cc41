"""The tasks that run the stack: bootstrap, init, up, apply, down, status, render, logs,
exec, maintenance and scale (its releases' tasks: releases.py)."""

from __future__ import annotations

import json
from pathlib import Path

from invoke import Exit

from deploy import apply as _apply
from deploy import bootstrap as _bootstrap
from deploy import contract, edge, scaffold, starting, views
from deploy import render as _render
from deploy.cli.common import (
    _load,
    _say_left_out,
    _target,
    operator_errors,
    task,
    whole,
)
from deploy.errors import BadInput, ColorgateError
from deploy.release import history as _history


@task(
    help={
        "refresh": "make every base image again now (Debian's security updates), however old",
    }
)
@operator_errors
def bootstrap(c, profile=None, host=None, refresh=False):
    """Check Docker, install the compose plugin and make the base images if missing or old."""
    settings = _load(profile, host)
    for part, outcome in _bootstrap.bootstrap(settings, refresh=refresh):
        print(f"{part:<16} {outcome}")


@task(
    help={
        "version": "version to start when no color is live yet (default: the newest built, or v1)",
        "yes": "on staging or production: recreate the shared services or the edge that changed",
    }
)
@operator_errors
def up(c, profile=None, host=None, registry=None, version=None, yes=False):
    """Start the stack, or apply what changed beside the colors of a running one (as apply)."""
    settings = _target(profile, host, registry, starts=True)
    _say_left_out(settings.app)
    starting.up(settings, version=version and edge.check_version(version), yes=yes)
    print(views.format_status(views.status(settings)))


@task(
    help={
        "plan": "only show what would change",
        "yes": "on staging or production: recreate the shared services or the edge that changed",
    }
)
@operator_errors
def apply(c, profile=None, host=None, registry=None, plan=False, yes=False):
    """Apply a changed contract or settings beside the colors: routes reloaded, new networks attached, shared services recreated."""
    settings = _target(profile, host, registry, starts=True)
    if plan:
        print("\n".join(_apply.plan(settings)))
        return
    starting.up(settings, yes=yes)
    print(views.format_status(views.status(settings)))


@task(
    help={
        "volumes": "also delete volumes: the database, backups, certificates and history",
        "yes": "confirm --volumes on staging and production",
    }
)
@operator_errors
def down(c, profile=None, host=None, volumes=False, yes=False):
    """Stop and remove the stack's containers; data volumes are kept unless --volumes (under the release lock)."""
    settings = _load(profile, host)
    _apply.check_down(settings, volumes, yes)  # before the engine is asked anything
    _bootstrap.check_docker(settings)
    _apply.down(settings, volumes=volumes, yes=yes)


@task(help={"json": "print machine-readable JSON"})
@operator_errors
def status(c, profile=None, host=None, json_=False):
    """Active color, each service's state, health and version, and the URLs."""
    settings = _target(profile, host)
    data = views.status(settings)
    history = edge.read_history(settings) if data["active"] else []
    data["last_release"] = history[-1] if history else None
    if json_:
        print(json.dumps(data, indent=2))
    else:
        print(views.format_status(data))
        if history:
            print("\nlast release:\n" + views.format_history(history, limit=1))


@task(
    help={
        "routes": "print the edge's nginx routes instead",
    }
)
@operator_errors
def render(c, profile=None, host=None, routes=False):
    """Print the compose file Colorgate runs, rendered from the app's x-colorgate block.

    Colored copies, shared services, Colorgate's own parts; secrets stay ${...}."""
    settings = _load(profile, host)
    if routes:
        print(edge.edge_routes(settings.app), end="")
        return
    print(
        _render.dump(
            _render.compose(settings.app), settings.app.file, _render.wiring(settings.app)
        ),
        end="",
    )
    _say_left_out(settings.app)


@task(
    help={
        "compose": "the app's compose file, or its directory (default: this directory)",
        "output": "where to write the copy (default: NAME.colorgate.yml beside it)",
    }
)
@operator_errors
def init(c, compose=".", output=None):
    """Draft an x-colorgate block for an existing compose file, in a copy of it.

    What it could infer (routes from published ports, health checks, the database) and TODOs."""
    path, draft = scaffold.init(Path(compose), Path(output) if output else None)
    print(f"wrote {path} (the original is unchanged)")
    for item in draft.todo:
        print(f"  TODO: {item}")
    try:
        app = contract.load(path)
        print(
            f"the contract is valid: Colorgate reads it there (run in {path.parent}, or set COLORGATE_APP={path}): "
            "`colorgate render`, then `colorgate up`; `pytest features/` runs the gates"
        )
        _say_left_out(app)
    except ColorgateError as exc:
        print(f"  still to fix: {exc}")


@task(
    positional=["service"],
    help={
        "service": "a compose service (edge, db, api_blue, ...), migrations or all",
        "follow": "keep following new lines",
        "tail": "lines per service (default 200)",
    },
)
@operator_errors
def logs(c, service, profile=None, host=None, follow=False, tail=None):
    """Show container logs of SERVICE (api_blue: a copy; `migrations`: the last ones; `all`)."""
    lines = whole(tail, "--tail", 200, 1, 1_000_000)
    settings = _target(profile, host)
    views.logs(settings, None if service == "all" else service, follow=follow, tail=lines)


@task(
    name="exec",
    positional=["service"],
    help={
        "service": "a colored service (web: the live color's copy), a copy (web_blue) or a shared one",
        "color": "the copy of this color instead of the live one",
    },
)
@operator_errors
def exec_(c, service, color=None, profile=None, host=None):
    """Run a command in a container of SERVICE, the live color's by default: colorgate exec web -- ls /app (exits with its code)."""
    code = views.exec_in(_target(profile, host), service, color, c.remainder)
    if code:
        raise Exit(code=code)


@task(
    help={
        "on": "answer every route with a 503 maintenance page",
        "off": "serve the app again",
        "message": "one line for the page",
        "retry": "seconds for Retry-After (default 60)",
    }
)
@operator_errors
def maintenance(c, on=False, off=False, message="", retry=None, profile=None, host=None):
    """Maintenance mode: the edge answers the app's routes with 503, Retry-After and a message; its own health stays up."""
    if on == off:
        raise BadInput("say --on or --off")
    retry = str(retry or 60)
    if not retry.isdigit() or not 1 <= int(retry) <= 86400:
        raise BadInput("--retry should be a number of seconds from 1 to 86400")
    settings = _target(profile, host)
    changed = _history.maintenance(settings, on, message, int(retry))
    print(
        "maintenance mode on: the app's routes answer 503"
        if on
        else "maintenance mode off: the app is served"
        if changed
        else "maintenance mode was off"
    )


@task(
    positional=["spec"],
    help={
        "spec": "SERVICE=N: the live color's copy of an app's colored service, run by N tasks",
    },
)
@operator_errors
def scale(c, spec, profile=None, host=None):
    """On a Swarm: run the live color's copy of a service with N replicas (the next deploy keeps N)."""
    service, sep, count = spec.partition("=")
    if not sep or not count.isdigit() or not 1 <= int(count) <= 100:
        raise BadInput(
            f"scale needs SERVICE=N with N from 1 to 100, got {spec!r}: e.g. invoke scale api=3"
        )
    settings = _target(profile, host)
    copy = _apply.scale(settings, service.strip(), int(count))
    print(f"{copy}: {count} replicas running")
