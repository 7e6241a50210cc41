"""The record of releases: who ran what, when, from which color to which, every
gate's result and each phase's time; the release lock around it. Both live on the
target (deploy/edge.py owns their files), so every operator and CI see the same ones.
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

from deploy import edge, facts, runner
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, GateFailed, LockHeld


def operator() -> str:
    return os.environ.get("COLORGATE_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    if break_lock:
        runner.say("!! breaking the release lock")
        edge.in_edge(settings, edge.unlock_cmd(), "breaking the lock")
    holder = json.dumps({"command": command, "operator": operator(), "since": now(), "pid": os.getpid(), "host": socket.gethostname()})
    try:
        edge.in_edge(settings, edge.lock_cmd(holder), "taking the release lock")
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
        edge.in_edge(settings, edge.unlock_cmd(), check=False)


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


def settle(record: Record, exc: BaseException | None) -> None:
    """The outcome of a release that ended (with `exc`, or not): switched, refused (a
    gate failed before the switch), rolled back (set when traffic went back), failed."""
    if exc is None:
        if record.outcome == "running":
            record.outcome = "switched"
    elif isinstance(exc, GateFailed):
        if record.outcome == "running":
            record.outcome = "refused"
        record.detail = str(exc)
    else:
        record.outcome = "failed"
        record.detail = str(exc) or type(exc).__name__


@contextlib.contextmanager
def recorded(settings: Settings, record: Record) -> Iterator[Record]:
    """Settle the record's outcome, time it, and append it to the target's history."""
    started = time.monotonic()
    try:
        yield record
        settle(record, None)
    except (ColorgateError, KeyboardInterrupt) as exc:
        settle(record, exc)
        raise
    finally:
        record.duration_s = round(time.monotonic() - started, 2)
        if record.outcome != "no-op":
            edge.append_history(settings, asdict(record))
