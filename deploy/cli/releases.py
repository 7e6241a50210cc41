"""The tasks of releases: deploy (with --canary), switch, rollback, the canary.* tasks,
the traffic per color, the history, and the switch benchmark (bench)."""

from __future__ import annotations

import json

from deploy import edge, views
from deploy.cli.common import (
    _load,
    _report,
    _target,
    operator_errors,
    task,
    whole,
)
from deploy.errors import BadInput, NothingToDo
from deploy.release import canary as canary_steps
from deploy.release import releases
from deploy.release import traffic as _traffic
from deploy.target import runner


@task(
    help={
        "seconds": "how far back (default 300)",
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
        "version": "version tag to deploy (default: the next vN)",
        "force": "deploy even if this version is live; rebuild images",
        "canary": "shares of users the new version gets first, in turn, each gated and judged: 10 or 10,50",
        "keep_rejected": "turned away after the switch: keep the new color running for debugging (default: stopped once drained)",
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
    help={"json": "print machine-readable JSON"},
)
@operator_errors
def canary_status(c, profile=None, host=None, json_=False):
    """The canary: its color and share of users, and the deploy running it."""
    data = canary_steps.status(_load(profile, host))
    print(json.dumps(data, indent=2) if json_ else canary_steps.format_status(data))


@task(name="promote")
@operator_errors
def canary_promote(c, profile=None, host=None):
    """End the canary's analysis now: its deploy switches everyone to it, gated."""
    print(canary_steps.promote(_load(profile, host)))


@task(name="abort")
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
        "no_gates": "emergency: switch back at once without running the gates",
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
    help={
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
