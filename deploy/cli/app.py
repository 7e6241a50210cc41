"""The tasks that run the stack and its releases: bootstrap, init, up, apply, down,
status, render, logs, traffic, maintenance, deploy, canary.*, switch, rollback, scale,
history and the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from invoke import Exit

from deploy import apply as _apply, bootstrap as _bootstrap, contract, edge, scaffold
from deploy import starting
from deploy.release import canary as canary_steps, history as _history, releases
from deploy import render as _render, views
from deploy.release import traffic as _traffic
from deploy.target import runner
from deploy.cli.common import (
    HOST_HELP,
    LOCK_HELP,
    REGISTRY_HELP,
    _load,
    _report,
    _say_left_out,
    _target,
    operator_errors,
    task,
    whole,
)
from deploy.errors import BadInput, NothingToDo, ColorgateError


@task(
    help={
        "profile": "env profile: development, staging or production",
        "host": HOST_HELP,
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
        "profile": "env profile: development, staging or production",
        "host": HOST_HELP,
        "registry": REGISTRY_HELP,
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
        "profile": "env profile",
        "host": HOST_HELP,
        "registry": REGISTRY_HELP,
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
        "profile": "env profile",
        "host": HOST_HELP,
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


@task(help={"profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"})
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
        "profile": "env profile",
        "host": HOST_HELP,
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
        "profile": "env profile",
        "host": HOST_HELP,
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
        "profile": "env profile",
        "host": HOST_HELP,
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
        "seconds": "how far back (default 300)",
        "profile": "env profile",
        "host": HOST_HELP,
        "json": "print machine-readable JSON",
    }
)
@operator_errors
def traffic(c, seconds=None, profile=None, host=None, json_=False):
    """Real traffic per color from the edge's request log: requests, 5xx share, p50/p95/p99 latency, versions."""
    try:
        seconds = float(seconds or 300)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= 86400:
        raise BadInput("--seconds should be a number of seconds from 1 to 86400")
    settings = _target(profile, host)
    found = _traffic.window(settings, seconds)
    print(
        json.dumps(_traffic.as_json(found), indent=2)
        if json_
        else _traffic.format_figures(found, seconds)
    )


@task(
    help={
        "on": "answer every route with a 503 maintenance page",
        "off": "serve the app again",
        "message": "one line for the page",
        "retry": "seconds for Retry-After (default 60)",
        "profile": "env profile",
        "host": HOST_HELP,
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
    help={
        "version": "version tag to deploy (default: the next vN)",
        "force": "deploy even if this version is live; rebuild images",
        "canary": "shares of users the new version gets first, in turn, each gated and judged: 10 or 10,50",
        "keep_rejected": "turned away after the switch: keep the new color running for debugging (default: stopped once drained)",
        "profile": "env profile",
        "host": HOST_HELP,
        "registry": REGISTRY_HELP,
        "break_lock": LOCK_HELP,
    }
)
@operator_errors
def deploy(
    c,
    version=None,
    force=False,
    canary=None,
    keep_rejected=False,
    profile=None,
    host=None,
    registry=None,
    break_lock=False,
):
    """Ship a version to the inactive color: build, start, gate, switch, gate again.

    It switches back by itself if the post-switch gates or the analysis fail."""
    shares = canary_steps.parse_percents(canary) if canary else ()
    settings = _target(profile, host, registry, starts=True)
    record = releases.deploy(
        settings,
        version=version,
        force=force,
        break_lock=break_lock,
        canary=shares,
        keep_rejected=keep_rejected,
    )
    if record.outcome == "no-op":  # nothing released: not a success a CI job could take for one
        raise NothingToDo(record.detail)
    _report(record)


@task(
    name="status",
    help={"profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"},
)
@operator_errors
def canary_status(c, profile=None, host=None, json_=False):
    """The canary: its color and share of users, and the deploy running it."""
    data = canary_steps.status(_load(profile, host))
    print(json.dumps(data, indent=2) if json_ else canary_steps.format_status(data))


@task(name="promote", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def canary_promote(c, profile=None, host=None):
    """End the canary's analysis now: its deploy switches everyone to it, gated."""
    print(canary_steps.promote(_load(profile, host)))


@task(name="abort", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def canary_abort(c, profile=None, host=None):
    """Every user back on the stable color at once; the deploy stops the canary."""
    print(canary_steps.abort(_load(profile, host)))


REJECTED_HELP = (
    "send traffic to a release that was turned away (its gates or analysis failed after a switch)"
)


@task(
    help={
        "to": "blue or green",
        "profile": "env profile",
        "host": HOST_HELP,
        "break_lock": LOCK_HELP,
        "force": REJECTED_HELP,
    }
)
@operator_errors
def switch(c, to=None, profile=None, host=None, break_lock=False, force=False):
    """Move traffic to an already running color, gated (pre gates, switch, post gates)."""
    if not to:  # a default, so that `invoke switch --help` is help, not a color named "--help"
        raise BadInput("switch needs a color: invoke switch --to blue (or green)")
    settings = _target(profile, host)
    _report(releases.switch(settings, to, break_lock=break_lock, force=force))


@task(
    help={
        "profile": "env profile",
        "host": HOST_HELP,
        "no_gates": "emergency: switch back at once without running the gates",
        "break_lock": LOCK_HELP,
        "force": REJECTED_HELP,
    }
)
@operator_errors
def rollback(c, profile=None, host=None, no_gates=False, break_lock=False, force=False):
    """Go back to the color that was live before the latest switch, gated."""
    settings = _target(profile, host)
    if no_gates:
        runner.say("!! rolling back without gates (--no-gates)")
    _report(releases.rollback(settings, use_gates=not no_gates, break_lock=break_lock, force=force))


@task(
    positional=["spec"],
    help={
        "spec": "SERVICE=N: the live color's copy of an app's colored service, run by N tasks",
        "profile": "env profile",
        "host": HOST_HELP,
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


@task(
    help={
        "profile": "env profile",
        "host": HOST_HELP,
        "limit": "how many records (default 20)",
        "json": "print machine-readable JSON",
        "show": "one record in full (1: the latest, 2: the one before, or its id): gates, canary and analysis figures, report",
    }
)
@operator_errors
def history(c, profile=None, host=None, limit=None, json_=False, show=None):
    """Deploys, switches and rollbacks recorded on the target, newest last."""
    limit = whole(limit, "--limit", 20, 1, 100_000)
    settings = _target(profile, host)
    records = edge.read_history(settings)
    if show:
        record = views.pick(records, show)
        print(
            json.dumps(record, indent=2) if json_ else views.format_release(record, settings.root)
        )
        return
    print(json.dumps(records[-limit:], indent=2) if json_ else views.format_history(records, limit))


@task(
    help={
        "switches": "switches without gates (default 20)",
        "gated": "gated switches (default 3)",
        "baseline": "naive recreations to compare (default 3)",
        "rps": "requests a second (wrk, clients that never retry; default 200)",
        "stream": "a server-sent-events path kept open across the switches",
        "path": "a path to request (repeatable; default: each routed service's health path)",
        "json": "write figures to this JSON file",
        "png": "write the plot to this PNG file",
        "no_bad_release": "skip the bad release that the analysis must flip back (time to detect, failed requests)",
        "swarm": "run on a test Swarm of this many Docker engines in containers, images pushed to its registry (default 0: one engine)",
        "replicas": "with --swarm: tasks of each colored service (default 3)",
    },
    iterable=["path"],
)
@operator_errors
def bench(
    c,
    switches=None,
    gated=None,
    baseline=None,
    rps=None,
    stream="",
    path=None,
    json_="benchmarks/out/switch_under_load.json",
    png="benchmarks/out/switch_under_load.png",
    no_bad_release=False,
    swarm=None,
    replicas=None,
):
    """Benchmark switching under HTTPS load on an isolated stack, against a naive recreate.

    The stack is the app's (or a test Swarm's); exits 8 without figures when the load
    client could not hold its rate."""
    switches, gated, baseline = (
        whole(switches, "--switches", 20, 1, 1000),
        whole(gated, "--gated", 3, 0, 100),
        whole(baseline, "--baseline", 3, 0, 100),
    )
    rps, swarm, replicas = (
        whole(rps, "--rps", 200, 1, 100_000),
        whole(swarm, "--swarm", 0, 0, 9),
        whole(replicas, "--replicas", 3, 1, 50),
    )
    from benchmarks import switch_under_load

    code = switch_under_load.main(
        [
            f"--switches={switches}",
            f"--gated={gated}",
            f"--baseline={baseline}",
            f"--rps={rps}",
            *([f"--stream={stream}"] if stream else []),
            *(f"--path={p}" for p in path or []),
            f"--json={json_}",
            f"--png={png}",
            *(["--no-bad-release"] if no_bad_release else []),
            f"--swarm={swarm}",
            f"--replicas={replicas}",
        ]
    )
    if code:
        raise SystemExit(code)
