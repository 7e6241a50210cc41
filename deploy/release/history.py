"""The record of releases: who ran what, when, from which color to which, every
gate's result and each phase's time (the release lock around it: deploy/edge/locking.py).
Both live on the target (deploy/edge/ owns their files), so every operator and CI see
the same ones.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from deploy import edge
from deploy.config import Settings
from deploy.errors import ColorgateError
from deploy.target import runner


def maintenance(settings: Settings, on: bool, message: str = "", retry: int = 60) -> bool:
    """Maintenance mode on or off at the edge, recorded in the history; False when it
    already was. Colorgate's gates pass with their token (gates.edge_client)."""
    if not on and edge.read_maintenance(settings) is None:
        return False
    text = edge.render_maintenance(message, retry, now()) if on else ""
    edge.set_maintenance(settings, text)
    live = edge.read_active(settings)
    edge.append_history(
        settings,
        asdict(
            Record(
                "maintenance",
                "",
                "",
                "",
                "",
                outcome="on" if on else "off",
                detail=message,
                live_color=live.color if live else "",
                live_version=live.version if live else "",
            )
        ),
    )
    return True


def operator() -> str:
    return os.environ.get("COLORGATE_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- phases ------------------------------------------------------------------------


ANALYSIS_PHASE = "analysis until "  # + the epoch second it ends (traffic.analyse): another operator sees what is left


def describe_phase(phase: str) -> str:
    """A lock's phase as an operator reads it: an analysis says how long it has left."""
    if phase.startswith(ANALYSIS_PHASE) and phase.split()[-1].isdigit():
        return f"analysing the new color's traffic, {max(0, int(phase.split()[-1]) - int(time.time()))} s left"
    return phase


@dataclass
class Record:
    action: str  # deploy, switch, rollback, migrate, db.move, break-lock, maintenance
    from_color: str
    to_color: str
    from_version: str
    to_version: str
    operator: str = field(default_factory=operator)
    started: str = field(default_factory=now)
    outcome: str = "running"  # switched, refused, rolled back, no-op, failed, interrupted, migrated, restored, broken
    detail: str = ""
    gates: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    # the new color's real traffic after the switch (traffic.analyse)
    analysis: dict = field(default_factory=dict)
    # {"t": epoch seconds, "what": "switch to green"}: for the report
    marks: list[dict] = field(default_factory=list)
    report: str = ""  # the release report (a PNG on the machine that ran it)
    duration_s: float = 0.0
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    phase: str = ""  # the last phase it reached
    live_color: str = ""  # where traffic was when it ended, read from the edge
    live_version: str = ""
    rejected: str = ""  # "green v5": a release its gates, its analysis or an operator's canary abort turned away
    # a failed command's last lines (CommandError.tail)
    output: list[str] = field(default_factory=list)
    commit: str = (
        ""  # the app's code a deploy shipped, by Git (`-dirty`: with changes), and its subject
    )
    subject: str = ""


@contextlib.contextmanager
def timed(record: Record, name: str, label: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        with runner.step(label):
            yield
    finally:
        record.timings[name] = round(record.timings.get(name, 0.0) + time.monotonic() - started, 3)


def previous_color(history: list[dict]) -> tuple[str, str] | None:
    """(color, version) that was live before traffic last moved: the latest record that
    ended with traffic on another color than it started from (read from the edge when it
    ended; older records without it: those that switched)."""
    for record in reversed(history):
        live = record.get("live_color") or (
            record.get("to_color") if record.get("outcome") == "switched" else ""
        )
        if live and record.get("from_color") and live != record["from_color"]:
            return record["from_color"], record["from_version"]
    return None


def rejected(history: list[dict], color: str) -> dict | None:
    """The record that rejected what `color` holds now: the latest release onto `color`
    (deploy, switch, rollback), when it was turned away (`rejected`); else None."""
    for record in reversed(history):
        if (
            record.get("to_color") == color
            and record.get("action") in ("deploy", "switch", "rollback", "db.move")
            and record.get("outcome") not in ("no-op", "running")
        ):
            return record if record.get("rejected") else None
    return None


def check_not_rejected(history: list[dict], color: str, version: str, force: bool) -> None:
    """Refuse to send traffic to a release that was turned away, unless `force`."""
    found = rejected(history, color)
    if found and not force and found.get("to_version") == version:
        raise ColorgateError(
            f"{color} holds {version}, which its {found['action']} of {found['started'][:19]} turned away "
            f"({found['outcome']}: {(found.get('detail') or '?')[:160]}): traffic does not go back to it; "
            "ship a release with `invoke deploy`, or add --force"
        )


def first_line(text: str, limit: int = 500) -> str:
    """What the history keeps of a failure's message: its first line, at most `limit`
    characters (a page of output belongs in `output`, bounded, not in every listing)."""
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"
