"""Releases: deploy, switch and rollback, each gated, locked and recorded on the target.

    lock -> [build, candidate up, healthy, migrate] -> pre gates -> switch -> post gates
         -> (post gates failed: switch back, gate the old color again) -> history -> unlock

The lock and the history live in the edge's state volume, next to the routing state,
so every operator (and CI) sees the same ones, and a remote target needs nothing but
Docker. The previous color keeps running: a rollback is a switch.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from deploy import db, edge, facts, gates, images, runner, stack
from deploy.colors import other, parse_color
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, GateFailed, LockHeld, StackError


def operator() -> str:
    return os.environ.get("COLORGATE_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- commands (data) -------------------------------------------------------------


# --- lock --------------------------------------------------------------------------


def describe_holder(text: str) -> str:
    """`deploy by ana@laptop since 2026-11-27T10:00:00+00:00 (pid 42)` from holder JSON."""
    try:
        h = json.loads(text)
        return f"{h['command']} by {h['operator']} since {h['since']} (pid {h['pid']} on {h['host']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder (unreadable lock file)"


@contextlib.contextmanager
def lock(settings: Settings, command: str, break_lock: bool = False) -> Iterator[None]:
    """Hold the target's release lock for the duration; refuse at once when taken."""
    env = settings.docker_env()
    if break_lock:
        runner.say("!! breaking the release lock")
        runner.run(edge.unlock_cmd(settings.project), env=env, what="breaking the lock")
    holder = json.dumps({"command": command, "operator": operator(), "since": now(), "pid": os.getpid(), "host": socket.gethostname()})
    try:
        runner.run(edge.lock_cmd(settings.project), input=holder, env=env, what="taking the release lock")
    except CommandError as exc:
        if exc.returncode == edge.LOCK_HELD:
            raise LockHeld(
                f"the target is locked by {describe_holder(exc.stdout)}: wait for it to finish, "
                "or if it died, retry with --break-lock"
            ) from None
        raise facts.edge_down(settings) or exc from None
    try:
        yield
    finally:
        runner.run(edge.unlock_cmd(settings.project), env=env, check=False)


# --- history -----------------------------------------------------------------------


@dataclass
class Record:
    action: str  # deploy, switch, rollback
    from_color: str
    to_color: str
    from_version: str
    to_version: str
    operator: str = field(default_factory=operator)
    started: str = field(default_factory=now)
    outcome: str = "running"  # switched, refused, rolled back, no-op, failed
    detail: str = ""
    gates: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    duration_s: float = 0.0


@contextlib.contextmanager
def timed(record: Record, name: str, label: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        with runner.step(label):
            yield
    finally:
        record.timings[name] = round(record.timings.get(name, 0.0) + time.monotonic() - started, 3)


def previous_color(history: list[dict]) -> tuple[str, str] | None:
    """(color, version) that was live before the latest completed switch."""
    for record in reversed(history):
        if record.get("outcome") == "switched":
            return record["from_color"], record["from_version"]
    return None


def format_history(history: list[dict], limit: int = 20) -> str:
    if not history:
        return "no releases recorded yet"
    lines = [f"{'STARTED':<26} {'ACTION':<9} {'FROM':<14} {'TO':<14} {'OUTCOME':<12} {'TIME':>6}  OPERATOR"]
    for r in history[-limit:]:
        passed = sum(1 for g in r.get("gates", []) if g.get("outcome") == "passed")
        lines.append(
            f"{r['started']:<26} {r['action']:<9} {r['from_color'] + ' ' + r['from_version']:<14} "
            f"{r['to_color'] + ' ' + r['to_version']:<14} {r['outcome']:<12} {r['duration_s']:>5.1f}s  {r['operator']}"
            + (f"  gates {passed}/{len(r['gates'])}" if r.get("gates") else "")
            + (f"  ({r['detail']})" if r.get("detail") else "")
        )
    return "\n".join(lines)


# --- the gated switch ------------------------------------------------------------


def _gate(settings: Settings, record: Record, phase: str, color: str, version: str) -> None:
    with timed(record, f"{phase}_gates", f"{phase} gates on {color} ({version})"):
        result = gates.run_gates(settings, phase, color, version)
    record.gates += [{"phase": phase, **asdict(s)} for s in result.scenarios]
    for line in result.summary_lines():
        runner.say(line)
    if not result.passed:
        raise GateFailed(f"{phase} gates failed on {color} ({version}): {result.first_failure()}")


def switch_and_verify(settings: Settings, record: Record, active: edge.Active, to: str, version: str, use_gates: bool,
                       pre: bool = True) -> None:
    """Pre gates, switch, post gates; when post gates fail, switch back and gate again."""
    if use_gates and pre:
        _gate(settings, record, "pre", to, version)
    with timed(record, "switch", f"switching traffic {active.color} -> {to}"):
        edge.write_active(settings, to, version)
    if not use_gates:
        return
    try:
        _gate(settings, record, "post", to, version)
    except GateFailed as failed:
        with timed(record, "switch_back", f"switching traffic back to {active.color}"):
            edge.write_active(settings, active.color, active.version)
        record.outcome = "rolled back"
        try:
            _gate(settings, record, "post", active.color, active.version)
        except GateFailed as again:
            raise GateFailed(f"{failed}; traffic is back on {active.color}, but its gates fail too: {again}") from None
        raise GateFailed(f"{failed}; traffic is back on {active.color} ({active.version})") from None


@contextlib.contextmanager
def recorded(settings: Settings, record: Record) -> Iterator[Record]:
    started = time.monotonic()
    try:
        yield record
        if record.outcome == "running":
            record.outcome = "switched"
    except GateFailed as exc:
        if record.outcome == "running":
            record.outcome = "refused"
        record.detail = str(exc)
        raise
    except (ColorgateError, KeyboardInterrupt) as exc:
        record.outcome = "failed"
        record.detail = str(exc) or type(exc).__name__
        raise
    finally:
        record.duration_s = round(time.monotonic() - started, 2)
        if record.outcome != "no-op":
            edge.append_history(settings, asdict(record))


def _verified_backup(settings: Settings, record: Record) -> None:
    """Before migrating: a backup that a real restore has verified, or stop."""
    with timed(record, "backup", "backing up the database before migrating"):
        manifest = db.backup(settings)
    with timed(record, "verify", f"verifying backup {manifest['name']}"):
        verified = db.verify(settings, manifest["name"])
    if not verified.usable:
        raise ColorgateError(f"the pre-migration backup {manifest['name']} did not verify ({verified.reason}): not migrating")
    record.detail = f"backup {manifest['name']}"


def live(settings: Settings) -> edge.Active:
    active = edge.read_active(settings)
    if active is None:
        raise StackError("no color is live yet: start the stack with `invoke up`")
    return active


def _require_ready(settings: Settings, states: dict[str, facts.ServiceState], color: str) -> str:
    """The version `color` runs, or refuse when it is not running and healthy."""
    names = stack.color_services(settings, color)
    missing = [s for s in names if s not in states or not states[s].ready]
    if missing:
        detail = ", ".join(f"{s} {states[s].state}/{states[s].health or 'no health'}" if s in states else f"{s} absent" for s in missing)
        raise StackError(f"{color} is not running and healthy ({detail}): deploy it first with `invoke deploy`")
    return states[names[0]].version


def check_same_database(settings: Settings, states: dict[str, facts.ServiceState], live: str, to: str) -> None:
    """Refuse to move traffic to a color that uses another database than the live one
    (the color left behind by db.move): its data stopped at the move."""
    ours, theirs = facts.color_database(settings, states, live), facts.color_database(settings, states, to)
    if ours and theirs and ours != theirs:
        raise ColorgateError(f"{to} uses the database {theirs}, but the live {live} uses {ours} (since db.move): "
                             f"switching would serve stale data; ship a release to {to} with `invoke deploy` instead")


def switch(settings: Settings, to: str, use_gates: bool = True, break_lock: bool = False, action: str = "switch") -> Record:
    """Move traffic to `to`, an already running color, gated."""
    to = parse_color(to)
    with lock(settings, action, break_lock):
        active = live(settings)
        states = facts.service_states(settings)
        version = _require_ready(settings, states, to)
        check_same_database(settings, states, active.color, to)
        record = Record(action, active.color, to, active.version, version)
        if to == active.color:
            record.outcome = "no-op"
            runner.say(f"{to} ({active.version}) is already live: nothing to do")
            return record
        with recorded(settings, record):
            switch_and_verify(settings, record, active, to, version, use_gates)
        return record


def rollback(settings: Settings, use_gates: bool = True, break_lock: bool = False) -> Record:
    """Switch back to the color that was live before the latest switch."""
    previous = previous_color(edge.read_history(settings))
    if previous is None:
        raise ColorgateError("no previous color in the history: nothing to roll back to")
    return switch(settings, previous[0], use_gates=use_gates, break_lock=break_lock, action="rollback")


def migrate(settings: Settings, break_lock: bool = False) -> int:
    """Apply the live color's pending migrations, after a verified backup. Returns how many."""
    db.require_postgres(settings)  # migrating needs a verified backup first
    with lock(settings, "migrate", break_lock):
        stack.check_database(settings)
        active = live(settings)
        pending = facts.pending_migrations(settings, active.color)
        if not settings.app.migrations:
            runner.say("the app declares no migrations (x-colorgate.migrations): nothing to migrate")
            return 0
        if pending is False:
            runner.say("the database is at head: nothing to migrate")
            return 0
        record = Record("migrate", active.color, active.color, active.version, active.version)
        with recorded(settings, record):
            _verified_backup(settings, record)
            versions = facts.running_versions(facts.service_states(settings))
            with timed(record, "migrations", "applying the database migrations"):
                stack.migrate(settings, active.color, versions)
            record.outcome = "migrated"
        return 1


def start_candidate(settings: Settings, record: Record, candidate: str, versions: dict[str, str], active: edge.Active,
                    databases: dict[str, str] | None = None, verified_backup: bool = True, migrate: bool | None = True) -> None:
    """Start `candidate` beside the live color and wait until healthy, then deal with
    its pending migrations (see candidate_migrations; None: not yet). Stops it again
    when any of that fails."""
    version = versions[candidate]
    names = stack.color_services(settings, candidate)
    with runner.step(f"starting {candidate} ({version}) beside {active.color} ({active.version})"):
        runner.run(
            stack.compose_cmd(settings, "up", "--detach", "--no-build", "--force-recreate", *names),
            env=stack.compose_env(settings, versions, databases),
            what="docker compose up",
        )
        try:
            stack.wait_ready(settings, names)
            gates.wait_healthy(settings, candidate)
        except StackError:
            stack.stop_color(settings, candidate, versions)
            raise
    if migrate is not None:
        candidate_migrations(settings, record, candidate, versions, databases, verified_backup, migrate)


def candidate_migrations(settings: Settings, record: Record, candidate: str, versions: dict[str, str],
                         databases: dict[str, str] | None = None, verified_backup: bool = True, migrate: bool = True) -> None:
    """Apply the running candidate's pending migrations (after a verified backup), or
    refuse them when not `migrate`; stop the candidate when that fails."""
    if not settings.app.migrations:
        return
    try:
        pending = facts.pending_migrations(settings, candidate)  # None: unknown (no status command)
        if pending and not migrate:
            raise ColorgateError(f"{candidate} ({versions[candidate]}) brings migrations the database lacks: "
                                 "ship them first with `invoke deploy`, then move")
        if pending is not False and migrate:
            if verified_backup and settings.app.postgres:
                _verified_backup(settings, record)
            with timed(record, "migrations", "applying the database migrations"):
                stack.migrate(settings, candidate, versions, databases)
    except ColorgateError:
        stack.stop_color(settings, candidate, versions)
        raise


def deploy(settings: Settings, version: str | None = None, force: bool = False, break_lock: bool = False) -> Record:
    """Ship `version` (default: the next vN) to the inactive color, gate it, switch."""
    with lock(settings, "deploy", break_lock):
        stack.check_database(settings)
        active = live(settings)
        candidate = other(active.color)
        version = version or images.next_version(images.release_tags(settings))
        edge.check_version(version)
        record = Record("deploy", active.color, candidate, active.version, version)
        if version == active.version and not force:
            record.outcome = "no-op"
            runner.say(f"{version} is already live on {active.color}: nothing to do (--force deploys it again)")
            return record
        with recorded(settings, record):
            versions = {**facts.running_versions(facts.service_states(settings)), candidate: version, active.color: active.version}
            with runner.step(f"{'pulling' if settings.registry else 'building'} {candidate} images ({version})"):
                stack.ensure_release_images(settings, candidate, versions, force=force)
            start_candidate(settings, record, candidate, versions, active)
            try:
                switch_and_verify(settings, record, active, candidate, version, use_gates=True)
            except GateFailed:
                if record.outcome == "running":  # refused before the switch: stop the candidate
                    stack.stop_color(settings, candidate, versions)
                raise
        return record
