"""After a move to a managed database: `invoke db.retire-local` stops the stack's own
PostgreSQL, and the colors still using it, once the app runs on the managed database and
a verified backup of the local one from after the move exists. Its data volume is
kept."""

from __future__ import annotations

import dataclasses

from deploy import access, edge
from deploy.colors import COLORS
from deploy.config import Settings
from deploy.data import db, dbtools
from deploy.edge.locking import lock, recorded
from deploy.errors import MoveError
from deploy.release import plans
from deploy.release.history import Record, now
from deploy.target import dbfacts, facts, runner, targets


def retire(settings: Settings, yes: bool = False) -> list[str]:
    """Stop the stack's own PostgreSQL (and colors still using it) once the app runs on
    the managed database and a verified backup of the local one from after the move
    exists, under the release lock and recorded (RETIRE_STEPS). The data volume is kept.
    Returns what was stopped."""
    dbtools.require_postgres(settings)
    with lock(settings, "db.retire-local"):
        record = access.check_database(settings)
        if record["url"] == "local":
            raise MoveError(
                "the stack's own PostgreSQL is the app's database: move it first with `invoke db.move --to URL`"
            )
        if record.get("retired"):
            runner.say(f"the local PostgreSQL was already retired on {record['retired']}")
            return []
        backup = _retire_backup(settings, record["moved"])
        if settings.profile in ("staging", "production") and not yes:
            raise MoveError(
                f"retiring the {settings.profile} stack's own PostgreSQL needs --yes (backup {backup} is verified)"
            )
        do = Retiring(settings, record, backup)
        live = edge.read_active(settings)
        history_record = Record(
            "db.retire-local",
            live.color if live else "",
            live.color if live else "",
            live.version if live else "",
            live.version if live else "",
            detail=f"backup {backup}",
        )
        with (
            recorded(settings, history_record),
            runner.step(f"stopping {', '.join(do.stopped)} (volumes kept)"),
        ):
            plans.execute(RETIRE_STEPS, do, history_record, RETIRE_UNDO)
            history_record.outcome = "retired"
        return do.stopped


def _retire_backup(settings: Settings, moved: str) -> str:
    """The latest verified backup of the local database taken since the move, or refuse."""
    local = dataclasses.replace(settings, database_url="")
    fresh = [
        b
        for b in db.list_backups(local)
        if b["manifest"].get("source", "local") == "local"
        and b["manifest"]["created"] >= moved
        and b.get("verify")
        and b["verify"]["usable"]
    ]
    if not fresh:
        raise MoveError(
            f"no verified backup of the local database taken since the move ({moved}): "
            "make one with `invoke db.backup --local`, then `invoke db.verify`"
        )
    return fresh[-1]["manifest"]["name"]


RETIRE_STEPS = ("stop", "record")
RETIRE_UNDO = plans.Undo(steps={"stop": "start_again"})


class Retiring:
    """db.retire-local's steps (RETIRE_STEPS orders them): the colors still on the local
    database and the database itself stopped (on a Swarm at 0 tasks, which later commands
    keep: swarm.replicas_for), then the database record says so. Undone by starting them
    again: until the record says retired, the stack runs as before."""

    def __init__(self, settings: Settings, record: dict, backup: str):
        self.settings, self.database_record, self.backup = settings, record, backup
        states = facts.service_states(settings)
        self.stale = [
            color for color in COLORS if dbfacts.color_database(settings, states, color) == "local"
        ]
        self.service = settings.app.database.service
        self.copies = [
            name
            for color in self.stale
            for name in settings.app.color_services(color)
            if name in states
        ]
        self.stopped = [*self.copies, self.service]
        self.target = targets.of(settings)
        self.counts = self.target.counts(settings)

    def stop(self) -> None:
        self.target.retire(self.settings, self.copies, self.service)

    def record(self) -> None:
        edge.write_database_record(
            self.settings, {**self.database_record, "retired": now(), "retired_backup": self.backup}
        )

    def start_again(self) -> None:
        with runner.step(
            f"starting {', '.join(self.stopped)} again: the local PostgreSQL is not retired"
        ):
            self.target.unretire(self.settings, self.copies, self.service, self.counts)
