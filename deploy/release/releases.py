"""Releases: deploy, switch and rollback, each gated, locked and recorded on the target.

    lock -> [build, candidate up, healthy, migrate] -> pre gates -> switch -> post gates
         -> (post gates failed: switch back, gate the old color again) -> history -> unlock

Plan as data, execute in one place: `observe` reads the facts once, `plan_*` decide
(pure: what moves where, which steps, or why there is nothing to do, or a refusal),
`execute` runs the steps and handles every failure the same way. The previous color
keeps running: a rollback is a switch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

from deploy import access, apply, edge, images, stack
from deploy.data import dbtools, migrations
from deploy.release import canary, gates, recover, traffic
from deploy.target import facts, runner
from deploy.colors import other, parse_color
from deploy.config import Settings
from deploy.errors import ColorgateError, ConfigError, FlippedBack, GateFailed, StackError
from deploy.release.history import Held, Record, at, check_not_rejected, lock, previous_color, recorded, rejected, timed
from deploy.target.targets import compose_env  # (release.Target is what a release observes, not the target it runs on)


# --- deciding: pure functions of the facts read from the target ------------------------


@dataclass(frozen=True)
class Target:
    """What a release decision needs to know about the target, read once (`observe`)."""

    active: edge.Active | None
    states: dict[str, facts.ServiceState]
    history: list[dict] = field(default_factory=list)
    database: dict = field(default_factory=lambda: {"url": "local"})  # the target's database record
    tags: list[str] = field(default_factory=list)  # release versions whose images exist
    beside: tuple[apply.Change, ...] = ()  # what starting the candidate would change beside it (apply.changes)
    commit: str = ""  # the app's code here, by Git (images.source_version): a deploy's version by default
    subject: str = ""  # that commit's subject


@dataclass(frozen=True)
class Plan:
    """A decided release: what moves where, and the steps, in order. `noop` says why
    there is nothing to do (then there are no steps)."""

    action: str
    from_color: str
    to_color: str
    from_version: str
    to_version: str
    steps: tuple[str, ...] = ()
    noop: str = ""
    canary: tuple[int, ...] = ()  # shares of users the candidate gets, in turn, before the switch (canary.py)
    rebuild: bool = False  # its images exist from a deploy of that version that never went live: made again


DEPLOY_STEPS = ("images", "start", "migrations", "pre_gates", "switch", "post_gates")
GATED_SWITCH = ("pre_gates", "switch", "post_gates")


def observe(settings: Settings, held: Held, tags: bool = False, database: bool = False, beside: bool = False) -> Target:
    """The facts a decision needs, and only those: the edge's files as the lock's exec
    read them (`held.found`: the live color, the freeze, the database record and, when
    the lock was asked for it, the history), the services from the Engine API, the
    release tags when asked (a switch or a rollback needs none) and, for a deploy
    (`beside`), what starting the candidate would change beside it. Under the lock, first
    repair what a run that died left behind (recover.py; thoroughly when --break-lock
    broke the lock of a run that died)."""
    found = held.found
    active = found.active
    states, record = recover.on_lock(settings, held)
    changes = apply.changes(settings, other(active.color), facts.running_versions(states), bool(record.get("retired")),
                            found.routes) if beside and active else []
    commit, subject = images.source_version(settings.app.directory) if beside and settings.versions == "commit" else ("", "")
    return Target(active, states, found.history or [], record if database else {"url": "local"},
                  images.release_tags(settings) if tags else [], tuple(changes), commit, subject)


def _live(target: Target) -> edge.Active:
    if target.active is None:
        raise StackError("no color is live yet: start the stack with `invoke up`")
    return target.active


def _ready_version(settings: Settings, states: dict[str, facts.ServiceState], color: str, history: list[dict] = ()) -> str:
    """The version `color` runs, or refuse when it is not running and healthy."""
    names = settings.app.color_services(color)
    missing = [s for s in names if s not in states or not states[s].up]
    turned_away = rejected(list(history), color)
    if missing and turned_away:
        raise StackError(f"{color} was stopped after its {turned_away['action']} of {turned_away['started'][:19]} was turned away "
                         f"({turned_away['to_version']}): nothing runs there to send traffic to; ship a release with `invoke deploy`")
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


def _analysis(settings: Settings) -> tuple[str, ...]:
    """After the post gates, the new color's real traffic is judged (COLORGATE_ANALYSIS_INTERVALS)."""
    return ("analysis",) if settings.analysis_intervals > 0 else ()


def plan_deploy(settings: Settings, target: Target, version: str | None = None, force: bool = False,
                canary: tuple[int, ...] = ()) -> Plan:
    """Ship `version` (default: the app's commit, else the next vN) to the inactive
    color (through canary steps first, when asked)."""
    access.check_database_record(settings, target.database)
    active = _live(target)
    if target.beside:
        raise ConfigError(apply.refusal(list(target.beside)))
    live = {s.version for s in target.states.values() if s.state == "running"} | ({target.active.version} if target.active else set())
    if version:
        rebuild = False
    elif target.commit:  # a commit's images are its code's; a changed tree's are made again each time
        version, rebuild = target.commit, target.commit.endswith("-dirty") and target.commit in target.tags
    else:
        version, rebuild = images.next_release(target.tags, target.history, live)
    version = edge.check_version(version)
    candidate = other(active.color)
    if version == active.version and not force and not (target.commit.endswith("-dirty") and version == target.commit):  # changed again
        return Plan("deploy", active.color, candidate, active.version, version,
                    noop=f"{version} is already live on {active.color}: nothing to do (--force deploys it again)")
    steps = DEPLOY_STEPS if not canary else (*DEPLOY_STEPS[:DEPLOY_STEPS.index("switch")], "canary", *DEPLOY_STEPS[DEPLOY_STEPS.index("switch"):])
    return Plan("deploy", active.color, candidate, active.version, version, steps + _analysis(settings), canary=canary, rebuild=rebuild)


def plan_switch(settings: Settings, target: Target, to: str, use_gates: bool = True, action: str = "switch",
                force: bool = False) -> Plan:
    """Move traffic to `to`, a color that is already running and healthy, and not holding
    a release that was turned away (unless `force`)."""
    to = parse_color(to)
    active = _live(target)
    check_same_database(settings, target.states, active.color, to)  # first: it says why a stopped color may not return
    version = _ready_version(settings, target.states, to, target.history)
    if to == active.color:
        return Plan(action, active.color, to, active.version, version, noop=f"{to} ({active.version}) is already live: nothing to do")
    check_not_rejected(target.history, to, version, force)
    return Plan(action, active.color, to, active.version, version, GATED_SWITCH + _analysis(settings) if use_gates else ("switch",))


def plan_rollback(settings: Settings, target: Target, use_gates: bool = True, force: bool = False) -> Plan:
    """Back to the color that was live before the latest completed switch."""
    previous = previous_color(target.history)
    if previous is None:
        raise ColorgateError("no previous color in the history: nothing to roll back to")
    return plan_switch(settings, target, previous[0], use_gates, action="rollback", force=force)


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
            raise FlippedBack(f"{failed}; traffic is back on {plan.from_color}, but its gates fail too: {again}") from None
        finally:
            do.retire_rejected()
        raise FlippedBack(f"{failed}; traffic is back on {plan.from_color} ({plan.from_version})") from None
    except (ColorgateError, KeyboardInterrupt) as exc:
        if started and not switching:
            do.stop_candidate()
        elif switched and "post_gates" in plan.steps:
            do.switch_back()
            record.outcome, record.rejected = "rolled back", f"{plan.to_color} {plan.to_version}"
            if isinstance(exc, ColorgateError):
                do.retire_rejected()
                raise FlippedBack(f"{exc}; traffic is back on {plan.from_color} ({plan.from_version})") from None
        raise


class Steps:
    """The steps of a release, on the real target."""

    def __init__(self, settings: Settings, plan: Plan, record: Record, versions: dict[str, str] | None = None,
                 databases: dict[str, str] | None = None, force: bool = False, verified_backup: bool = True,
                 migrate: bool = True, keep_rejected: bool = False):
        self.settings, self.plan, self.record = settings, plan, record
        self.versions = {**(versions or {}), plan.to_color: plan.to_version, plan.from_color: plan.from_version}
        self.databases, self.force, self.verified_backup, self.migrate = databases, force, verified_backup, migrate
        self.keep_rejected = keep_rejected

    def images(self) -> None:
        p = self.plan
        with runner.step(f"{'pulling' if self.settings.registry else 'building'} {p.to_color} images ({p.to_version})"):
            stack.ensure_release_images(self.settings, p.to_color, self.versions, force=self.force or p.rebuild, release=True)

    def start(self) -> None:
        start_candidate(self.settings, self.plan, self.versions, self.databases)

    def migrations(self) -> None:
        candidate_migrations(self.settings, self.record, self.plan.to_color, self.versions, self.databases,
                             self.verified_backup, self.migrate)

    def pre_gates(self) -> None:
        _gate(self.settings, self.record, "pre", self.plan.to_color, self.plan.to_version)

    def canary(self) -> None:
        """Each share of users in turn on the candidate, gated and judged (canary.py)."""
        p = self.plan
        for number, percent in enumerate(p.canary):
            at(self.record, f"canary {percent}%")
            with timed(self.record, "canary", f"sending {percent}% of users to {p.to_color} ({p.to_version})"):
                decided = canary.start(self.settings, p.to_color, p.to_version, percent, first=number == 0)
                self._mark(f"canary {percent}%")
            if decided == "promote":
                break
            _gate(self.settings, self.record, "post", p.to_color, p.to_version)
            if traffic.analyse_canary(self.settings, self.record, p.to_color, p.from_color, percent, self._promoted):
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
            if p.canary:  # after the switch: the canary names the live color now, so it routes no one
                canary.clear(self.settings)

    def post_gates(self) -> None:
        _gate(self.settings, self.record, "post", self.plan.to_color, self.plan.to_version)

    def analysis(self) -> None:
        traffic.analyse(self.settings, self.record, self.plan.to_color, self.plan.from_color)

    def switch_back(self) -> None:
        p = self.plan
        with timed(self.record, "switch_back", f"switching traffic back to {p.from_color}"):
            edge.write_active(self.settings, p.from_color, p.from_version)
            self._mark(f"switch back to {p.from_color}")

    def gates_back(self) -> None:
        _gate(self.settings, self.record, "post", self.plan.from_color, self.plan.from_version)

    def retire_rejected(self) -> None:
        """After traffic went back: the color turned away stopped once its requests
        drained (kept with its logs), unless kept running for debugging. db.move stops
        its own candidate, once it knows where its writes went."""
        p = self.plan
        if p.action == "db.move":
            return
        if self.keep_rejected:
            runner.say(f"-- {p.to_color} ({p.to_version}) keeps running for debugging (--keep-rejected); "
                       "traffic does not go to it again without --force")
            return
        with timed(self.record, "stop_rejected", f"stopping {p.to_color} ({p.to_version}) once its requests drained"):
            stack.stop_color(self.settings, p.to_color, self.versions)

    def stop_candidate(self) -> None:
        if self.plan.canary:  # every user back on the stable color first
            with runner.step(f"ending the canary: everyone on {self.plan.from_color} ({self.plan.from_version})"):
                canary.clear(self.settings)
                self._mark("canary ended")
        stack.stop_color(self.settings, self.plan.to_color, self.versions)


def _gate(settings: Settings, record: Record, phase: str, color: str, version: str) -> None:
    with timed(record, f"{phase}_gates", f"{phase} gates on {color} ({version})"):
        result = gates.run_gates(settings, phase, color, version)
    record.gates += [{"phase": phase, **asdict(s)} for s in result.scenarios]
    for line in result.summary_lines():
        runner.say(line)
    if not result.passed:
        raise GateFailed(f"{phase} gates failed on {color} ({version}): {result.first_failure()}")


def _record(plan: Plan) -> Record:
    return Record(plan.action, plan.from_color, plan.to_color, plan.from_version, plan.to_version)


def _run(settings: Settings, plan: Plan, target: Target, force: bool = False, keep_rejected: bool = False) -> Record:
    """Record and execute a plan decided from `target` (a no-op is said, not recorded)."""
    record = _record(plan)
    record.commit, record.subject = target.commit, target.subject
    if plan.noop:
        record.outcome, record.detail = "no-op", plan.noop
        if plan.action != "deploy":  # deploy's task exits with it
            runner.say(plan.noop)
        return record
    if plan.action == "deploy":  # a release's picture, next to its gate reports
        record.report = str(settings.reports_dir / f"release-{record.started.replace(':', '')}-{record.id}.png")
    try:
        with recorded(settings, record, phase=plan.steps[0]):
            execute(plan, Steps(settings, plan, record, facts.running_versions(target.states), force=force,
                                keep_rejected=keep_rejected), record)
    finally:
        if record.report and record.outcome != "interrupted":  # a signal ends the command now, without a picture
            traffic.write_report(settings, record)
    return record


def switch(settings: Settings, to: str, use_gates: bool = True, break_lock: bool = False, force: bool = False) -> Record:
    """Move traffic to `to`, an already running color, gated (a release turned away: with `force`)."""
    parse_color(to)
    with lock(settings, "switch", break_lock, history=True) as held:
        target = observe(settings, held)
        return _run(settings, plan_switch(settings, target, to, use_gates, force=force), target)


def rollback(settings: Settings, use_gates: bool = True, break_lock: bool = False, force: bool = False) -> Record:
    """Switch back to the color that was live before the latest switch."""
    with lock(settings, "rollback", break_lock, history=True) as held:
        target = observe(settings, held)
        return _run(settings, plan_rollback(settings, target, use_gates, force), target)


def deploy(settings: Settings, version: str | None = None, force: bool = False, break_lock: bool = False,
           canary: tuple[int, ...] = (), keep_rejected: bool = False) -> Record:
    """Ship `version` (default: the next vN) to the inactive color, gate it, switch
    (through the canary shares first, when given); turned away after the switch, the
    candidate is stopped once drained (`keep_rejected`: kept running for debugging)."""
    with lock(settings, "deploy", break_lock, history=True) as held:
        target = observe(settings, held, tags=version is None, database=True, beside=True)
        return _run(settings, plan_deploy(settings, target, version, force, canary), target, force, keep_rejected)


def gate(settings: Settings, record: Record, plan: Plan, phase: str) -> None:
    """One gate phase on the plan's candidate (db.move gates it before its freeze)."""
    _gate(settings, record, phase, plan.to_color, plan.to_version)


def switch_and_verify(settings: Settings, record: Record, plan: Plan, versions: dict[str, str] | None = None,
                      pre_gates: bool = True) -> None:
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
        active = _live(target)
        pending = facts.pending_migrations(settings, active.color)
        if not settings.app.migrations:
            runner.say("the app declares no migrations (x-colorgate.migrations): nothing to migrate")
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


def start_candidate(settings: Settings, plan: Plan, versions: dict[str, str], databases: dict[str, str] | None = None,
                    wait: bool = True, held: list[str] | None = None) -> None:
    """Start the plan's candidate beside the live color and (unless not `wait`) wait
    until it is ready (wait_candidate). Services in `held` (db.move's workers) are
    created but not started: they start when traffic has moved."""
    candidate, version = plan.to_color, plan.to_version
    held = held or []
    started = [s for s in settings.app.color_services(candidate) if s not in held]
    with runner.step(f"starting {candidate} ({version}) beside {plan.from_color} ({plan.from_version})"):
        grace = stack.drain_color(settings, candidate)  # streams from its last time live end within the bound
        access.prepare_clients(settings, candidate, (databases or {}).get(candidate) or settings.app_database_url())
        stack.start(settings, started, compose_env(settings, versions, databases), candidate, recreate=True,
                    grace=grace, held=held, databases=databases)
        if wait:
            wait_candidate(settings, plan, services=started)


def wait_candidate(settings: Settings, plan: Plan, recovering: bool = False, services: list[str] | None = None) -> None:
    """Until the candidate's containers (or those of `services`) run and every health
    check of its routed services passes, asked from the edge (`recovering`: see
    stack.wait_ready)."""
    stack.wait_ready(settings, settings.app.color_services(plan.to_color) if services is None else services,
                     recovering=recovering)
    stack.wait_healthy(settings, plan.to_color)


def candidate_migrations(settings: Settings, record: Record, candidate: str, versions: dict[str, str],
                         databases: dict[str, str] | None = None, verified_backup: bool = True, migrate: bool = True) -> None:
    """Apply the running candidate's pending migrations (after a verified backup), or
    refuse them when not `migrate`."""
    if not settings.app.migrations:
        return
    pending = facts.pending_migrations(settings, candidate)  # None: unknown (no status command)
    if pending and not migrate:
        raise ColorgateError(f"{candidate} ({versions[candidate]}) brings migrations the database lacks: "
                             "ship them first with `invoke deploy`, then move")
    if pending is not False and migrate:
        migrations.run(settings, record, candidate, versions, databases, backup=verified_backup and settings.app.postgres)
