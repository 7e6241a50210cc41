"""What a run that died leaves behind, found and repaired before the next command acts.

A command killed at the wrong moment (SIGKILL, a host that lost power, a laptop that
slept: no `finally` runs) can leave the target in a state the next command would act
on wrongly. Every locked command (deploy, switch, rollback, db.migrate, db.move, apply) calls
`reconcile` once it holds the lock, so nothing else runs meanwhile:

    a write freeze           with no db.move, db.restore or apply running: writes open again,
                             in the local database first while it is the app's (a move
                             that died after its switch leaves the old one refusing them)
    the replication relay    (db.move --mode replicate): removed, with what it opened (the
                             database's rules, the host firewall's), then the publication,
                             slot and role on the local database (a slot left behind holds
                             WAL until the disk fills)
    the database record      says `local` while the live color's clients use the managed
                             database (db.move killed between its switch and its record):
                             the live color is what serves, so the record is rewritten
                             from it; any other disagreement is refused
    the live color's workers not running (paused or held by a db.move that died): started
    a canary                 with no deploy running it (one died): every user back on the
                             live color (the canary's color is left running; the next
                             deploy replaces it)

With `dead`, the holder of a lock --break-lock broke (it died), first: the one-off
containers it started (database tools, secret staging; labelled with its pid@host) are removed, before anything
opens writes: a pg_restore or pg_dump that its killed `docker compose run` left going on
alone would otherwise change data after the next command let writes in. Then the local
database is also searched for the publication, slot and role without waiting for a
relay to hint at them. Each repair is said in one line.
"""

from __future__ import annotations

from deploy import edge, stack
from deploy.config import Settings
from deploy.data import dbtools, relay, replication
from deploy.edge import locking
from deploy.errors import StackError
from deploy.release import canary
from deploy.release.history import now
from deploy.target import connections, dbfacts, facts, runner


def plan_repairs(
    active: bool,
    frozen: bool,
    canary_left: bool,
    dead_run: bool,
    relay_left: bool,
    thorough: bool,
    local: bool,
    retired: bool,
    workers_stopped: bool,
) -> tuple[str, ...]:
    """The repairs, in order, from what the lock's exec and the engine said (pure): a dead
    run's one-off containers first (before anything opens writes: a pg_restore left going
    on would change data after them), its canary, the database record (the live color's
    clients say where the database is), the write freeze, the relay before the
    replication's slot (a subscriber still running cannot come back to it), the workers."""
    return (
        *(("remove_one_offs",) if dead_run else ()),
        *(("end_canary",) if canary_left else ()),
        *(("check_record",) if active else ()),
        *(("open_writes",) if frozen else ()),
        *(("remove_relay",) if relay_left else ()),
        *(("drop_replication",) if (relay_left or thorough) and local and not retired else ()),
        *(("start_workers",) if active and workers_stopped else ()),
    )


def reconcile(
    settings: Settings,
    active: edge.Active | None,
    states: dict[str, facts.ServiceState],
    frozen: bool,
    record: dict,
    dead: dict | None = None,
    canary_left: bool = False,
) -> tuple[dict[str, facts.ServiceState], dict]:
    """Repair what a dead run left (see the module), from what the lock's exec read
    (`active`, `frozen`, the database `record`) and the services' `states`; returns the
    states (read again when something was started) and the database record (repaired)."""
    do = Repairs(settings, active, states, record, dead)
    repairs = plan_repairs(
        active is not None,
        frozen,
        canary_left,
        bool(dead and dead.get("pid") and dead.get("host")),
        relay.left(settings, states),
        dead is not None,
        do.local,
        bool(record.get("retired")),
        bool(do.stopped),
    )
    for repair in repairs:
        getattr(do, repair)()
    return do.states, do.record


class Repairs:
    """Each repair of `reconcile` on the real target (plan_repairs orders them)."""

    def __init__(
        self,
        settings: Settings,
        active: edge.Active | None,
        states: dict[str, facts.ServiceState],
        record: dict,
        dead: dict | None,
    ):
        self.settings, self.active, self.states, self.record, self.dead = (
            settings,
            active,
            states,
            record,
            dead,
        )
        pg = settings.app.postgres
        # the stack's own, running
        self.local = bool(pg and pg.service in states and states[pg.service].state == "running")
        self.stopped = (
            [
                name
                for name in settings.app.worker_services(active.color)
                if name in states and states[name].state in ("created", "exited")
            ]
            if active
            else []
        )

    def remove_one_offs(self) -> None:
        left = facts.one_offs(
            self.settings,
            f"{locking.HOLDER_LABEL}={locking.process_label(self.dead['pid'], self.dead['host'])}",
        )
        for container in left:
            connections.engine(
                self.settings.docker_host,
                "remove_container",
                container,
                force=True,
                what="removing a dead run's one-off container",
            )
        if left:
            runner.say(
                f"!! the run that died left {len(left)} one-off container(s) (database tools, secret staging): removed"
            )

    def end_canary(self) -> None:
        canary.clear(self.settings)
        runner.say("!! a deploy that died left its canary: every user is on the live color again")

    def check_record(self) -> None:
        self.record = _database_record(self.settings, self.record, self.active, self.states)

    def open_writes(self) -> None:
        # the app's database still: it takes writes again first
        if self.local and self.record.get("url") == "local":
            dbtools.freeze_database(self.settings, False)
        edge.set_frozen(self.settings, False)
        runner.say(
            "!! writes were frozen at the edge with no db.move, db.restore or apply running (one died): writes open again"
        )

    def remove_relay(self) -> None:
        relay.remove(self.settings)
        runner.say("!! a db.move that died left its replication relay: removed")

    def drop_replication(self) -> None:
        found = replication.drop(self.settings)
        if found:
            runner.say(
                f"!! a db.move that died left its {', '.join(found)} ({relay.ROLE}) on the local database: dropped"
            )

    def start_workers(self) -> None:
        stack.resume(self.settings, self.stopped, facts.running_versions(self.states), wait=False)
        runner.say(
            f"!! {self.active.color} is live but its workers ({', '.join(self.stopped)}) were not running (a db.move died): started"
        )
        self.states = facts.service_states(self.settings)


def on_lock(settings: Settings, held: locking.Held) -> tuple[dict[str, facts.ServiceState], dict]:
    """`reconcile` from what the lock's exec read (`held.found`), thoroughly when
    --break-lock broke the lock of a run that died: what a locked command calls first."""
    found = held.found
    return reconcile(
        settings,
        found.active,
        facts.service_states(settings),
        found.frozen,
        found.database,
        dead=held.broken.holder if held.broken else None,
        canary_left=found.canary,
    )


def unfreeze(settings: Settings, break_lock: bool = False) -> bool:
    """End a write freeze left by an interrupted db.move, db.restore or apply (at the
    edge, and in the local database while it is the app's) under the release lock, so
    never the freeze of one that runs: its lock refuses. False when there was none."""
    with locking.lock(settings, "db.unfreeze", break_lock) as held:
        on_lock(settings, held)
        return held.found.frozen


def _database_record(
    settings: Settings, record: dict, active: edge.Active, states: dict[str, facts.ServiceState]
) -> dict:
    """The record, repaired when it says `local` but the live color uses a managed database."""
    serving = dbfacts.color_database(settings, states, active.color)
    if not serving or serving == record["url"]:
        return record
    if record["url"] == "local":
        record = {
            "url": serving,
            "moved": now(),
            "mode": "unknown",
            "from": "local",
            "live_color": active.color,
            "version": active.version,
            "repaired": "db.move ended between its switch and its record",
        }
        edge.write_database_record(settings, record)
        runner.say(
            f"!! the live {active.color} uses {serving}, but the record said the database is the stack's own "
            "(a db.move died between its switch and its record): record repaired"
        )
        return record
    raise StackError(
        f"the live {active.color} uses the database {serving}, but the target's record says {record['url']}: "
        f"switch to the color that uses {record['url']} (`invoke status` shows which), then deploy"
    )
