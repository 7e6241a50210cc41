"""Releases: deploy, switch and rollback, each gated, locked and recorded on the target.

    lock -> [build, candidate up, healthy, migrate] -> pre gates -> switch -> post gates
         -> (post gates failed: switch back, gate the old color again) -> history -> unlock

Plan as data, execute in one place: `observe` reads the facts once, `plan_*` decide
(pure: what moves where, which steps, or why there is nothing to do, or a refusal; both
in decide.py), `execute` runs the steps (`Steps`; the candidate's own in candidate.py)
and handles every failure the same way. The previous color
keeps running: a rollback is a switch.
"""

from __future__ import annotations

import dataclasses
import time

from deploy import access, edge, stack
from deploy.colors import parse_color
from deploy.config import Settings
from deploy.data import dbtools, migrations
from deploy.edge.locking import at, lock, recorded
from deploy.errors import ColorgateError, FlippedBack, GateFailed
from deploy.release import analysis, canary, report
from deploy.release.candidate import candidate_migrations, gate_color, start_candidate
from deploy.release.decide import (
    GATED_SWITCH,
    Plan,
    Target,
    active_of,
    observe,
    plan_deploy,
    plan_rollback,
    plan_switch,
)
from deploy.release.history import Record, timed
from deploy.target import dbfacts, facts, runner

# --- executing: one place runs a plan's steps and handles their failures ----------------


def execute(plan: Plan, do, record: Record) -> None:
    """Run the plan's steps in order through `do` (an object with one method per step,
    plus stop_candidate, switch_back and gates_back). A failure before the switch stops
    a started candidate; post gates that fail, break or are interrupted switch traffic
    back (the new color is not verified) and, when they failed, gate the old color
    again. A failure of the switch itself is left as it is: traffic may already have
    moved (the record says where it is)."""
    started = switching = switched = False
    try:
        for step in plan.steps:
            switching = switching or step == "switch"
            started = started or step == "start"
            at(record, step)
            getattr(do, step)()
            switched = switched or step == "switch"
    except GateFailed as failed:
        if started or switching:
            record.rejected = f"{plan.to_color} {plan.to_version}"
        if not switching:
            if started:
                do.stop_candidate()
            raise
        if "post_gates" not in plan.steps:
            raise
        do.switch_back()
        record.outcome = "rolled back"
        try:
            do.gates_back()
        except GateFailed as again:
            raise FlippedBack(
                f"{failed}; traffic is back on {plan.from_color}, but its gates fail too: {again}"
            ) from None
        finally:
            do.retire_rejected()
        raise FlippedBack(
            f"{failed}; traffic is back on {plan.from_color} ({plan.from_version})"
        ) from None
    except (ColorgateError, KeyboardInterrupt) as exc:
        if started and not switching:
            do.stop_candidate()
        elif switched and "post_gates" in plan.steps:
            do.switch_back()
            record.outcome, record.rejected = "rolled back", f"{plan.to_color} {plan.to_version}"
            if isinstance(exc, ColorgateError):
                do.retire_rejected()
                raise FlippedBack(
                    f"{exc}; traffic is back on {plan.from_color} ({plan.from_version})"
                ) from None
        raise


class Steps:
    """The steps of a release, on the real target."""

    def __init__(
        self,
        settings: Settings,
        plan: Plan,
        record: Record,
        versions: dict[str, str] | None = None,
        databases: dict[str, str] | None = None,
        force: bool = False,
        verified_backup: bool = True,
        migrate: bool = True,
        keep_rejected: bool = False,
    ):
        self.settings, self.plan, self.record = settings, plan, record
        self.versions = {
            **(versions or {}),
            plan.to_color: plan.to_version,
            plan.from_color: plan.from_version,
        }
        self.databases, self.force, self.verified_backup, self.migrate = (
            databases,
            force,
            verified_backup,
            migrate,
        )
        self.keep_rejected = keep_rejected

    def images(self) -> None:
        p = self.plan
        with runner.step(
            f"{'pulling' if self.settings.registry else 'building'} {p.to_color} images ({p.to_version})"
        ):
            stack.ensure_release_images(
                self.settings,
                p.to_color,
                self.versions,
                force=self.force or p.rebuild,
                release=True,
            )

    def start(self) -> None:
        start_candidate(self.settings, self.plan, self.versions, self.databases)

    def migrations(self) -> None:
        candidate_migrations(
            self.settings,
            self.record,
            self.plan.to_color,
            self.versions,
            self.databases,
            self.verified_backup,
            self.migrate,
        )

    def pre_gates(self) -> None:
        gate_color(self.settings, self.record, "pre", self.plan.to_color, self.plan.to_version)

    def canary(self) -> None:
        """Each share of users in turn on the candidate, gated and judged (canary.py)."""
        p = self.plan
        for number, percent in enumerate(p.canary):
            at(self.record, f"canary {percent}%")
            with timed(
                self.record,
                "canary",
                f"sending {percent}% of users to {p.to_color} ({p.to_version})",
            ):
                decided = canary.start(
                    self.settings, p.to_color, p.to_version, percent, first=number == 0
                )
                self._mark(f"canary {percent}%")
            if decided == "promote":
                break
            gate_color(self.settings, self.record, "post", p.to_color, p.to_version)
            if analysis.analyse_canary(
                self.settings, self.record, p.to_color, p.from_color, percent, self._promoted
            ):
                break

    def _promoted(self) -> bool:
        found = canary.decision(self.settings)
        if found == "abort":
            raise GateFailed(canary.ABORTED)
        return found == "promote"

    def _mark(self, what: str) -> None:
        self.record.marks.append({"t": round(time.time(), 3), "what": what})

    def switch(self) -> None:
        p = self.plan
        with timed(self.record, "switch", f"switching traffic {p.from_color} -> {p.to_color}"):
            edge.write_active(self.settings, p.to_color, p.to_version)
            self._mark(f"switch to {p.to_color}")
            # after the switch: the canary names the live color now, so it routes no one
            if p.canary:
                canary.clear(self.settings)

    def post_gates(self) -> None:
        gate_color(self.settings, self.record, "post", self.plan.to_color, self.plan.to_version)

    def analysis(self) -> None:
        analysis.analyse(self.settings, self.record, self.plan.to_color, self.plan.from_color)

    def switch_back(self) -> None:
        p = self.plan
        with timed(self.record, "switch_back", f"switching traffic back to {p.from_color}"):
            edge.write_active(self.settings, p.from_color, p.from_version)
            self._mark(f"switch back to {p.from_color}")

    def gates_back(self) -> None:
        gate_color(self.settings, self.record, "post", self.plan.from_color, self.plan.from_version)

    def retire_rejected(self) -> None:
        """After traffic went back: the color turned away stopped once its requests
        drained (kept with its logs), unless kept running for debugging. db.move stops
        its own candidate, once it knows where its writes went."""
        p = self.plan
        if p.action == "db.move":
            return
        if self.keep_rejected:
            runner.say(
                f"-- {p.to_color} ({p.to_version}) keeps running for debugging (--keep-rejected); "
                "traffic does not go to it again without --force"
            )
            return
        with timed(
            self.record,
            "stop_rejected",
            f"stopping {p.to_color} ({p.to_version}) once its requests drained",
        ):
            stack.stop_color(self.settings, p.to_color, self.versions)

    def stop_candidate(self) -> None:
        if self.plan.canary:  # every user back on the stable color first
            with runner.step(
                f"ending the canary: everyone on {self.plan.from_color} ({self.plan.from_version})"
            ):
                canary.clear(self.settings)
                self._mark("canary ended")
        stack.stop_color(self.settings, self.plan.to_color, self.versions)


def _record(plan: Plan) -> Record:
    return Record(plan.action, plan.from_color, plan.to_color, plan.from_version, plan.to_version)


def _run(
    settings: Settings, plan: Plan, target: Target, force: bool = False, keep_rejected: bool = False
) -> Record:
    """Record and execute a plan decided from `target` (a no-op is said, not recorded)."""
    record = _record(plan)
    record.commit, record.subject = target.commit, target.subject
    if plan.noop:
        record.outcome, record.detail = "no-op", plan.noop
        if plan.action != "deploy":  # deploy's task exits with it
            runner.say(plan.noop)
        return record
    if plan.action == "deploy":  # a release's picture, next to its gate reports
        record.report = str(
            settings.reports_dir / f"release-{record.started.replace(':', '')}-{record.id}.png"
        )
    try:
        with recorded(settings, record, phase=plan.steps[0]):
            execute(
                plan,
                Steps(
                    settings,
                    plan,
                    record,
                    facts.running_versions(target.states),
                    force=force,
                    keep_rejected=keep_rejected,
                ),
                record,
            )
    finally:
        # a signal ends the command now, without a picture
        if record.report and record.outcome != "interrupted":
            report.write_report(settings, record)
    return record


def switch(
    settings: Settings,
    to: str,
    use_gates: bool = True,
    break_lock: bool = False,
    force: bool = False,
) -> Record:
    """Move traffic to `to`, an already running color, gated (a release turned away: with `force`)."""
    parse_color(to)
    with lock(settings, "switch", break_lock, history=True) as held:
        target = observe(settings, held)
        return _run(settings, plan_switch(settings, target, to, use_gates, force=force), target)


def rollback(
    settings: Settings, use_gates: bool = True, break_lock: bool = False, force: bool = False
) -> Record:
    """Switch back to the color that was live before the latest switch."""
    with lock(settings, "rollback", break_lock, history=True) as held:
        target = observe(settings, held)
        return _run(settings, plan_rollback(settings, target, use_gates, force), target)


def deploy(
    settings: Settings,
    version: str | None = None,
    force: bool = False,
    break_lock: bool = False,
    canary: tuple[int, ...] = (),
    keep_rejected: bool = False,
) -> Record:
    """Ship `version` (default: the next vN) to the inactive color, gate it, switch
    (through the canary shares first, when given); turned away after the switch, the
    candidate is stopped once drained (`keep_rejected`: kept running for debugging)."""
    with lock(settings, "deploy", break_lock, history=True) as held:
        target = observe(settings, held, tags=version is None, database=True, beside=True)
        return _run(
            settings,
            plan_deploy(settings, target, version, force, canary),
            target,
            force,
            keep_rejected,
        )


def switch_and_verify(
    settings: Settings,
    record: Record,
    plan: Plan,
    versions: dict[str, str] | None = None,
    pre_gates: bool = True,
) -> None:
    """Pre gates (unless already run), switch, post gates (switching back when they
    fail) for a plan decided elsewhere (db.move)."""
    steps = GATED_SWITCH if pre_gates else ("switch", "post_gates")
    execute(dataclasses.replace(plan, steps=steps), Steps(settings, plan, record, versions), record)


def migrate(settings: Settings, break_lock: bool = False) -> int:
    """Apply the live color's pending migrations, after a verified backup. Returns how many."""
    dbtools.require_postgres(settings)  # migrating needs a verified backup first
    with lock(settings, "migrate", break_lock) as held:
        target = observe(settings, held, database=True)
        access.check_database_record(settings, target.database)
        active = active_of(target)
        pending = dbfacts.pending_migrations(settings, active.color)
        if not settings.app.migrations:
            runner.say(
                "the app declares no migrations (x-colorgate.migrations): nothing to migrate"
            )
            return 0
        if pending is False:
            runner.say("the database is at head: nothing to migrate")
            return 0
        record = Record("migrate", active.color, active.color, active.version, active.version)
        with recorded(settings, record):
            versions = facts.running_versions(target.states)
            migrations.run(settings, record, active.color, versions)
            record.outcome = "migrated"
        return 1
