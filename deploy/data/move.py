"""db.move: cut the app over from the stack's own PostgreSQL to a managed one.

Both modes end with the normal gated release of the next color, pointed at the new
database, and both freeze writes at the edge for the last stretch: a write that
arrives then is held (COLORGATE_HOLD_SECONDS) and passed on to the new color when the
freeze ends, or answered 503 with Retry-After at the bound; reads go on.

The order is data: `plan_steps` lists the steps of each mode (pure; the case files in
tests/unit/cases/move_runs.yaml hold it, and every failure path), `execute` runs them
through `Steps` (movesteps.py) and undoes, latest first, what a failure leaves (UNDO). In short:

    dump:      images -> start the next color on the (empty) target -> pause the old
               color's workers -> freeze -> drain (then the local database refuses
               writes) -> dump -> restore into the target -> verify (target = dump =
               local: row counts, then content) -> its migrations -> ready -> pre gates
               -> the local content unchanged -> switch and post gates -> record -> unfreeze
    replicate: images -> subscribe (schema, publication, one-off role, TLS relay, the
               initial copy) -> start the next color on the replica -> pre gates ->
               pause the old color's workers -> the cut-over's container -> freeze ->
               drain -> catch up (every row count, then every table's content, equal)
               -> end the replication (sequences, subscription, publication, role) ->
               switch and post gates -> record -> unfreeze -> remove the relay
    both:      start the next color's workers, stop the old color (its reads drained)

The replicate freeze covers only what must not see a write: everything that can run
before it does. The local database's data is only read; it refuses writes from the
freeze on (from then on it is not the app's) and stays until `invoke db.retire-local`
(retire.py; replicate backs it up after the move). A failure before the switch (or post
gates that fail after it, inside the freeze) leaves traffic on the old color with the local
database, its workers running again, writes open again (in the database first). The
checks before anything changes are movecheck.py's, the replication's own parts
(subscription, cut-over script) replication.py's, its relay relay.py's.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote, urlsplit

from deploy.config import Settings
from deploy.data import db, dbtools, verify
from deploy.data.movecheck import check_url, preflight
from deploy.data.movesteps import Steps
from deploy.edge.locking import lock, recorded
from deploy.errors import ColorgateError, ConfigError, GateFailed, MoveError
from deploy.release import decide, plans
from deploy.release.history import Record
from deploy.target import runner
from deploy.urls import shown_url

MODES = ("dump", "replicate")


# --- the order: a pure plan, run by one executor that undoes what a failure leaves --------


def plan_steps(mode: str, workers: bool, held: bool) -> tuple[str, ...]:
    """db.move's steps in order. `workers`: the old color has workers, paused from just
    before the freeze until traffic moved (one would write jobs to the old database);
    `held`: the candidate has workers, started once traffic moved."""
    pause = ("pause_workers",) if workers else ()
    finish = ("start_workers",) if held else ()
    # everything that can run before the freeze does: it covers only the cut-over
    if mode == "replicate":
        return (
            "images",
            "subscribe",
            "start",
            "migrations",
            "pre_gates",
            *pause,
            "open_cut_over",
            "freeze",
            "drain",
            "catch_up",
            "end_replication",
            "switch",
            "record",
            "unfreeze",
            "close_cut_over",
            "remove_relay",
            *finish,
            "stop_old",
        )
    return (
        "images",
        "start",
        *pause,
        "freeze",
        "drain",
        "dump",
        "restore",
        "verify",
        "migrations",
        "ready",
        "pre_gates",
        "compare",
        "switch",
        "record",
        "unfreeze",
        *finish,
        "stop_old",
    )


# What undoes each step when it, or one after it, fails; wherever traffic is: the freeze
# ends, the cut-over's container stops, the replication's parts and its relay go, and a
# move whose switch went through is recorded (its writes go to the target); the rest only
# while traffic is on the old color.
UNDO = plans.Undo(
    steps={
        "subscribe": "drop_subscription",
        "start": "stop_candidate",
        "pause_workers": "resume_workers",
        "open_cut_over": "close_cut_over",
        "freeze": "thaw",
        "switch": "record_if_moved",
    },
    always=("subscribe", "open_cut_over", "freeze", "switch"),
    ends={"unfreeze": "freeze", "close_cut_over": "open_cut_over", "record": "switch"},
)
TOUCHES = ("subscribe", "restore")  # begun, they leave a partial copy in the target


def execute(steps: tuple[str, ...], do, record: Record, plan: decide.Plan, shown: str) -> None:
    """Run a move's `steps` through `do` (plans.execute, with UNDO); an error that leaves
    traffic on the old color after the target was touched says so, and that the target
    must be emptied before a retry."""

    def explain(exc: BaseException, done: list[str], moved: bool) -> BaseException | None:
        if isinstance(exc, ColorgateError) and not moved and any(step in done for step in TOUCHES):
            kind = type(exc) if isinstance(exc, GateFailed) else MoveError
            return kind(
                f"{exc}; traffic stays on {plan.from_color} with the local database, untouched; "
                f"the target {shown} now holds a partial copy: empty it before retrying"
            )
        return None

    plans.execute(
        steps,
        do,
        record,
        UNDO,
        moved=lambda done: "switch" in done and do.traffic_moved(),
        explain=explain,
    )


def move(settings: Settings, url: str, mode: str = "dump", break_lock: bool = False) -> Record:
    """Move the app's database from the stack's PostgreSQL to the (empty) one at `url`."""
    dbtools.require_postgres(settings)
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}: use dump or replicate")
    url = check_url(url)
    runner.add_secret(unquote(urlsplit(url).password or ""))
    runner.add_secret(url)
    if settings.database_url:
        raise MoveError(
            f"the app already uses {shown_url(settings.database_url)} (DATABASE_URL): db.move moves the stack's own PostgreSQL only"
        )
    isolated = settings.app.without_egress(settings.app.database_clients())
    if isolated:
        raise MoveError(
            f"{isolated[0]} uses the database but is on internal networks only, so it could not reach a managed one: "
            f"give it a network that is not internal in {settings.app.file.name}"
        )
    with lock(settings, "db.move", break_lock) as held:
        # the next version on the inactive color, as a deploy would; never a no-op
        target = decide.observe(settings, held, tags=True, database=True, beside=True)
        plan = dataclasses.replace(
            decide.plan_deploy(settings, target, force=True), action="db.move"
        )
        with runner.step(f"checking the target database {shown_url(url)}"):
            preflight(settings, url, mode)
        record = Record(
            plan.action, plan.from_color, plan.to_color, plan.from_version, plan.to_version
        )
        with recorded(settings, record):
            do = Steps(settings, record, plan, url, mode)
            execute(
                plan_steps(mode, bool(do.workers), bool(do.held)), do, record, plan, shown_url(url)
            )
            record.detail = (
                f"{mode} to {shown_url(url)}, write freeze {record.timings['write_freeze']:.1f}s"
                + (f", {record.detail}" if record.detail else "")
            )
    if mode == "replicate":
        local = dataclasses.replace(settings, database_url="")
        with runner.step(
            "backing up the local database as it was at the move (for db.retire-local)"
        ):
            manifest = db.backup(local)
            verified = verify.verify(local, manifest["name"])
        runner.say(
            f"   backup {manifest['name']}: {'usable' if verified.usable else 'UNUSABLE: ' + verified.reason}"
        )
    return record


# --- after db.move ------------------------------------------------------------------
