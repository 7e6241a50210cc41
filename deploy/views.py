"""What an operator reads: the target's status, the history, one release in full.
Each reads through facts (the services) and edge (its state files) and only formats."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from deploy import bases, edge, stack
from deploy.colors import COLORS, parse_color
from deploy.config import Settings
from deploy.edge import locking
from deploy.errors import BadInput
from deploy.release import analysis as traffic_analysis
from deploy.release import history
from deploy.target import facts, runner, targets


def status(settings: Settings) -> dict:
    """Active color, per-service state and health, versions and URLs, as data. A
    container the engine has not checked yet (it checks five minutes apart) is checked now."""
    states = facts.service_states(settings)
    starting = [
        name for name, s in states.items() if s.state == "running" and s.health == "starting"
    ]
    for name, passed in zip(
        starting,
        facts.parallel(lambda name: facts.passes_healthcheck(settings, name), starting),
        strict=True,
    ):
        if passed:
            states[name] = replace(states[name], health="healthy")
    edge_running = bool(states.get("edge") and states["edge"].state == "running")
    return {
        "project": settings.project,
        "profile": settings.profile,
        "engine": settings.docker_host or "local",
        "active": None,
        "writes_frozen": False,
        "maintenance": None,
        "canary": None,
        "rejected": {},
        "lock": None,
        **(_edge_status(settings, states) if edge_running else {}),
        "services": [asdict(s) for _, s in sorted(states.items())],
        "urls": {"https": settings.https_url + "/", "http": settings.http_url + "/"},
        "bases": {
            "ages": bases.base_ages(settings.builder, bases.needed_bases(settings.builder)),
            "max_age": settings.base_max_age,
        },
    }


def _edge_status(settings: Settings, states: dict[str, facts.ServiceState]) -> dict:
    """What the running edge says: the live color, the freeze, maintenance, the canary,
    the colors a release turned away, the lock."""
    files = edge.read_files(settings, "live", "freeze", "maintenance", "canary", "history.jsonl")
    found = edge.live_of(files["live"])
    active = asdict(found) if found else None
    split = edge.parse_canary(files["canary"])
    records = edge.parse_history(files["history.jsonl"])
    turned_away = {}
    for color in COLORS:
        record = history.rejected(records, color)
        if record:
            running = any(s.color == color and s.state == "running" for s in states.values())
            turned_away[color] = {
                "version": record["to_version"],
                "action": record["action"],
                "started": record["started"],
                "outcome": record["outcome"],
                "running": running,
            }
    taken = edge.read_lock(settings)
    held = {k: v for k, v in asdict(taken).items() if k != "token"} if taken else None
    return {
        "active": active,
        "writes_frozen": bool(files["freeze"].strip()),
        "maintenance": {
            k: v for k, v in edge.state_fields(files["maintenance"]).items() if k != "bypass"
        }
        or None,
        "canary": split if split and active and split["color"] != active["color"] else None,
        "rejected": turned_away,
        "lock": {**held, "stale": taken.stale, "dead": locking.dead_here(taken)} if taken else None,
    }


def format_status(data: dict) -> str:
    """The human view of `status()`."""
    active = data["active"]
    lines = [
        f"project {data['project']} (profile {data['profile']}, engine {data['engine']})",
        f"active color: {active['color']} ({active['version']})"
        if active
        else "active color: none",
    ]
    live = next(
        (
            s
            for s in data["services"]
            if active and s["color"] == active["color"] and s.get("database")
        ),
        None,
    )
    if live:
        lines.append(f"database: {live['database']}")
    lines += _mode_lines(data)
    lines += [
        "",
        f"{'SERVICE':<20} {'STATE':<10} {'HEALTH':<10} {'VERSION':<10} PORTS",
    ]
    for s in data["services"]:
        lines.append(
            f"{s['service']:<20} {s['state']:<10} {s['health'] or '-':<10} {s['version'] or '-':<10} {', '.join(s['ports']) or '-'}"
        )
        if s.get("restarted"):
            lines.append(f"  !! {s['service']} {s['restarted']}")
    if not data["services"]:
        lines.append("(no containers: run `invoke up`)")
    lines += ["", *(f"{name:<6} {url}" for name, url in data["urls"].items())]
    return "\n".join(lines)


def _mode_lines(data: dict) -> list[str]:
    """The status lines of what is not the everyday: the lock, maintenance, a canary, the
    colors turned away, the freeze, the base images' age."""
    lines = []
    held = data.get("lock")
    if held:
        lines.append(
            f"release lock: {edge.describe_holder(held['holder'])}"
            + (f", at {history.describe_phase(held['phase'])}" if held["phase"] else "")
            + f", last heartbeat {held['age']} s ago"
            + (
                " (DEAD: its process is gone from this machine; see `invoke history`, then --break-lock)"
                if held.get("dead")
                else " (STALE: its run died? see `invoke history`, then --break-lock)"
                if held["stale"]
                else ""
            )
        )
    if data.get("maintenance"):
        m = data["maintenance"]
        lines.append(
            f"MAINTENANCE MODE since {m.get('since', '?')}: the app's routes answer 503"
            + (f" ({m['message']})" if m.get("message") else "")
            + " - `invoke maintenance --off` ends it"
        )
    if data.get("canary"):
        c = data["canary"]
        lines.append(
            f"canary: {c['color']} ({c['version']}) gets {c['percent']}% of users - `invoke canary.status`"
        )
    for color, r in (data.get("rejected") or {}).items():
        lines.append(
            f"rejected: {color} ({r['version']}), turned away by its {r['action']} of {r['started'][:19]} ({r['outcome']}); "
            + ("kept running for debugging" if r["running"] else "stopped")
            + ": traffic does not go to it without --force"
        )
    if data.get("writes_frozen"):
        lines.append(
            "writes: FROZEN at the edge (a db.move is running, or was interrupted: `invoke db.unfreeze`)"
        )
    made = data.get("bases") or {}
    if made.get("ages"):
        old = bases.stale(made["ages"], made["max_age"])
        lines.append(
            "base images: "
            + ", ".join(f"{name} {bases.format_age(age)}" for name, age in made["ages"].items())
            + (
                f"; {', '.join(old)} to be made again (the next deploy does, or `invoke bootstrap --refresh`)"
                if old
                else f" old (made again after {bases.format_age(made['max_age'])})"
                if made["max_age"]
                else " old"
            )
        )
    return lines


def format_history(history: list[dict], limit: int = 20) -> str:
    if not history:
        return "no releases recorded yet"
    lines = [
        f"{'STARTED':<26} {'ACTION':<9} {'FROM':<14} {'TO':<14} {'OUTCOME':<12} {'TIME':>6}  OPERATOR"
    ]
    for r in history[-limit:]:
        passed = sum(1 for g in r.get("gates", []) if g.get("outcome") == "passed")
        lines.append(
            f"{r['started']:<26} {r['action']:<9} {r['from_color'] + ' ' + r['from_version']:<14} "
            f"{r['to_color'] + ' ' + r['to_version']:<14} {r['outcome']:<12} {r['duration_s']:>5.1f}s  {r['operator']}"
            + (f"  gates {passed}/{len(r['gates'])}" if r.get("gates") else "")
            + (f"  ({r['detail']})" if r.get("detail") else "")
            + (
                f"  [traffic on {r['live_color']}]"
                if r.get("outcome") in ("failed", "interrupted") and r.get("live_color")
                else ""
            )
            + (f"  [rejected: {r['rejected']}]" if r.get("rejected") else "")
        )
    return "\n".join(lines)


def format_backups(backups: list[dict]) -> str:
    if not backups:
        return "no backups yet: `invoke db.backup` makes one"
    now = datetime.now(UTC)
    lines = [f"{'NAME':<24} {'SIZE':>10} {'AGE':>8}  {'OFF-HOST':<12} VERIFIED"]
    for b in backups:
        m = b["manifest"]
        if b.get("remote_only"):
            lines.append(
                f"{m['name']:<24} {'-':>10} {'-':>8}  {'only there':<12} -  (db.verify or db.restore fetches it)"
            )
            continue
        age = now - datetime.fromisoformat(m["created"])
        hours = age.total_seconds() / 3600
        shown_age = (
            f"{hours * 60:.0f}m"
            if hours < 1
            else f"{hours:.1f}h"
            if hours < 48
            else f"{hours / 24:.0f}d"
        )
        v = b.get("verify")
        state = "-" if not v else ("usable" if v["usable"] else f"UNUSABLE: {v['reason']}")
        copied = "copied" if b.get("copy") else "-"
        lines.append(f"{m['name']:<24} {b['size']:>10} {shown_age:>8}  {copied:<12} {state}")
    return "\n".join(lines)


def pick(history: list[dict], which: str) -> dict:
    """A record by its id, or by position: 1 is the latest, 2 the one before, ..."""
    found = [r for r in history if r.get("id") == which]
    if found:
        return found[-1]
    if str(which).isdigit() and 1 <= int(which) <= len(history):
        return history[-int(which)]
    raise BadInput(
        f"no record {which!r} in the history ({len(history)} kept): give 1 for the latest, 2 for the one "
        "before, ..., or an id from `invoke history --json`"
    )


def _intervals(intervals: list[dict], against: str = "") -> list[str]:
    return [f"    {traffic_analysis.format_interval(i, against)}" for i in intervals]


def format_release(r: dict, here: Path | None = None) -> str:
    """One record in full (`invoke history --show N`): outcome, timings, every gate
    scenario, the canary steps and the analysis with their figures, marks, the report."""
    lines = [
        f"{r['action']} {r['from_color']} {r['from_version']} -> {r['to_color']} {r['to_version']}: {r['outcome']} "
        f"in {r.get('duration_s', 0):.1f}s, by {r.get('operator', '?')}, started {r['started']} (id {r.get('id', '?')})"
    ]
    if r.get("commit"):
        lines.append(f"  commit: {r['commit']} {r.get('subject', '')}".rstrip())
    if r.get("detail"):
        lines.append(f"  detail: {r['detail']}")
    if r.get("output"):
        lines += ["  its last lines:", *(f"    | {line}" for line in r["output"])]
    if r.get("rejected"):
        lines.append(
            f"  rejected: {r['rejected']} (traffic does not go back to it without --force)"
        )
    if r.get("timings"):
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["timings"].items()))
    marks = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
    if r.get("gates"):
        lines.append("  gates:")
        for g in r["gates"]:
            lines.append(
                f"    {g['phase']:<5} {marks.get(g['outcome'], g['outcome'].upper())}  {g['feature']}: {g['name']}"
                + (
                    f" - step: {g.get('step') or '?'}; why: {g.get('message')}"
                    if g["outcome"] == "failed"
                    else ""
                )
            )
    analysis = r.get("analysis") or {}
    stable = r.get("from_color", "")
    for step in analysis.get("canary", []):
        lines.append(f"  canary {step['percent']}% of users: {step.get('verdict', 'not finished')}")
        lines += _intervals(step.get("intervals", []), stable)
    if "intervals" in analysis:
        lines.append(
            f"  analysis after the switch: {analysis.get('verdict', 'not finished')}; {stable} before it: {traffic_analysis.describe(analysis.get('baseline'))}"
        )
        lines += _intervals(analysis["intervals"])
    if r.get("marks"):
        began = datetime.fromisoformat(r["started"]).timestamp()
        lines.append(
            "  marks: " + "; ".join(f"+{m['t'] - began:.1f}s {m['what']}" for m in r["marks"])
        )
    if r.get("report"):
        path = Path(r["report"])
        there = (here / path if here and not path.is_absolute() else path).is_file()
        lines.append(
            f"  report: {r['report']}"
            + ("" if there else " (not on this machine: it is written where the release ran)")
        )
    return "\n".join(lines)


def logs(
    settings: Settings, service: str | None = None, follow: bool = False, tail: int = 200
) -> None:
    known = [
        *stack.infra_services(settings),
        *(name for color in COLORS for name in settings.app.color_services(color)),
    ]
    # each color's last, kept until its next
    if service == "migrations" and settings.app.migrations:
        for color in COLORS:
            shown = runner.run(
                [
                    "docker",
                    "logs",
                    "--tail",
                    str(tail),
                    stack.migrations_container(settings, color),
                ],
                env=settings.docker_env(),
                check=False,
            )
            print(
                f"---- the last migrations of {color} ----\n{shown.stdout}{shown.stderr}"
                if shown.returncode == 0
                else f"---- {color} has no migrations kept ----"
            )
        return
    if service is not None and service not in known:
        extra = ", migrations" if settings.app.migrations else ""
        raise BadInput(f"unknown service {service!r}: use one of {', '.join(known)}{extra}, or all")
    targets.of(settings).logs(settings, service, known, follow, tail)


def exec_in(settings: Settings, service: str, color: str | None, command: str) -> int:
    """`invoke exec`: `command` (a shell command line) in the container of `service`: a
    colored service's copy of `color` (default: the live one), a copy by name (web_blue),
    or a shared service. Returns its exit code."""
    app = settings.app
    if not command.strip():
        raise BadInput(f"exec needs a command after --: colorgate exec {service} -- ls /")
    if service in app.colored:
        live = edge.read_active(settings)
        if not (color or live):
            raise BadInput("no color is live yet: name one with --color blue")
        service = app.copy_name(service, parse_color(color) if color else live.color)
    known = [*app.shared, *app.colored, *(name for c in COLORS for name in app.color_services(c))]
    if service not in known:
        raise BadInput(f"unknown service {service!r}: use one of {', '.join(known)}")
    tty = ["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else []
    cmd = ["docker", "exec", "-i", *tty, facts.container(settings, service), "sh", "-c", command]
    return runner.run(
        cmd, env=settings.docker_env(), capture=False, check=False, what=f"exec in {service}"
    ).returncode
