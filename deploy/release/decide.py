"""Deciding a release: the facts it is planned from (observe: the live color, the states of
both colors, the history) and its plan, a pure function of them (plan_deploy, plan_switch,
plan_rollback), tested from captured facts in tests/unit/cases/."""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy import access, apply, edge, images
from deploy.colors import other, parse_color
from deploy.config import Settings
from deploy.edge.locking import Held
from deploy.errors import ColorgateError, ConfigError, StackError
from deploy.release import recover
from deploy.release.history import check_not_rejected, previous_color, rejected
from deploy.target import dbfacts, facts


@dataclass(frozen=True)
class Target:
    """What a release decision needs to know about the target, read once (`observe`)."""

    active: edge.Active | None
    states: dict[str, facts.ServiceState]
    history: list[dict] = field(default_factory=list)
    database: dict = field(default_factory=lambda: {"url": "local"})  # the target's database record
    tags: list[str] = field(default_factory=list)  # release versions whose images exist
    beside: tuple[
        apply.Change, ...
    ] = ()  # what starting the candidate would change beside it (apply.changes)
    commit: str = (
        ""  # the app's code here, by Git (images.source_version): a deploy's version by default
    )
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
    canary: tuple[
        int, ...
    ] = ()  # shares of users the candidate gets, in turn, before the switch (canary.py)
    rebuild: bool = (
        False  # its images exist from a deploy of that version that never went live: made again
    )


DEPLOY_STEPS = ("images", "start", "migrations", "pre_gates", "switch", "post_gates")


GATED_SWITCH = ("pre_gates", "switch", "post_gates")


def observe(
    settings: Settings, held: Held, tags: bool = False, database: bool = False, beside: bool = False
) -> Target:
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
    changes = (
        apply.changes(
            settings,
            other(active.color),
            facts.running_versions(states),
            bool(record.get("retired")),
            found.routes,
        )
        if beside and active
        else []
    )
    commit, subject = (
        images.source_version(settings.app.directory)
        if beside and settings.versions == "commit"
        else ("", "")
    )
    return Target(
        active,
        states,
        found.history or [],
        record if database else {"url": "local"},
        images.release_tags(settings) if tags else [],
        tuple(changes),
        commit,
        subject,
    )


def active_of(target: Target) -> edge.Active:
    if target.active is None:
        raise StackError("no color is live yet: start the stack with `invoke up`")
    return target.active


def _ready_version(
    settings: Settings, states: dict[str, facts.ServiceState], color: str, history: list[dict] = ()
) -> str:
    """The version `color` runs, or refuse when it is not running and healthy."""
    names = settings.app.color_services(color)
    missing = [s for s in names if s not in states or not states[s].up]
    turned_away = rejected(list(history), color)
    if missing and turned_away:
        raise StackError(
            f"{color} was stopped after its {turned_away['action']} of {turned_away['started'][:19]} was turned away "
            f"({turned_away['to_version']}): nothing runs there to send traffic to; ship a release with `invoke deploy`"
        )
    if missing:
        detail = ", ".join(
            f"{s} {states[s].state}/{states[s].health or 'no health'}"
            if s in states
            else f"{s} absent"
            for s in missing
        )
        raise StackError(
            f"{color} is not running and healthy ({detail}): deploy it first with `invoke deploy`"
        )
    return states[names[0]].version


def check_same_database(
    settings: Settings, states: dict[str, facts.ServiceState], live: str, to: str
) -> None:
    """Refuse to move traffic to a color that uses another database than the live one
    (the color left behind by db.move): its data stopped at the move."""
    ours, theirs = (
        dbfacts.color_database(settings, states, live),
        dbfacts.color_database(settings, states, to),
    )
    if ours and theirs and ours != theirs:
        raise ColorgateError(
            f"{to} uses the database {theirs}, but the live {live} uses {ours} (since db.move): "
            f"switching would serve stale data; ship a release to {to} with `invoke deploy` instead"
        )


def _analysis(settings: Settings) -> tuple[str, ...]:
    """After the post gates, the new color's real traffic is judged (COLORGATE_ANALYSIS_INTERVALS)."""
    return ("analysis",) if settings.analysis_intervals > 0 else ()


def plan_deploy(
    settings: Settings,
    target: Target,
    version: str | None = None,
    force: bool = False,
    canary: tuple[int, ...] = (),
) -> Plan:
    """Ship `version` (default: the app's commit, else the next vN) to the inactive
    color (through canary steps first, when asked)."""
    access.check_database_record(settings, target.database)
    active = active_of(target)
    if target.beside:
        raise ConfigError(apply.refusal(list(target.beside)))
    version, rebuild = _version_of(target, version)
    version = edge.check_version(version)
    candidate = other(active.color)
    dirty_again = target.commit.endswith("-dirty") and version == target.commit  # changed again
    if version == active.version and not force and not dirty_again:
        return Plan(
            "deploy",
            active.color,
            candidate,
            active.version,
            version,
            noop=f"{version} is already live on {active.color}: nothing to do (--force deploys it again)",
        )
    steps = (
        DEPLOY_STEPS
        if not canary
        else (
            *DEPLOY_STEPS[: DEPLOY_STEPS.index("switch")],
            "canary",
            *DEPLOY_STEPS[DEPLOY_STEPS.index("switch") :],
        )
    )
    return Plan(
        "deploy",
        active.color,
        candidate,
        active.version,
        version,
        steps + _analysis(settings),
        canary=canary,
        rebuild=rebuild,
    )


def _version_of(target: Target, version: str | None) -> tuple[str, bool]:
    """The version a deploy ships, and whether its images are made again: the one asked
    for; else the commit's (a changed tree's, marked -dirty, made again each time); else
    the next vN after every version tagged, recorded or running."""
    if version:
        return version, False
    if target.commit:
        return target.commit, target.commit.endswith("-dirty") and target.commit in target.tags
    live = {s.version for s in target.states.values() if s.state == "running"} | (
        {target.active.version} if target.active else set()
    )
    return images.next_release(target.tags, target.history, live)


def plan_switch(
    settings: Settings,
    target: Target,
    to: str,
    use_gates: bool = True,
    action: str = "switch",
    force: bool = False,
) -> Plan:
    """Move traffic to `to`, a color that is already running and healthy, and not holding
    a release that was turned away (unless `force`)."""
    to = parse_color(to)
    active = active_of(target)
    # first: it says why a stopped color may not return
    check_same_database(settings, target.states, active.color, to)
    version = _ready_version(settings, target.states, to, target.history)
    if to == active.color:
        return Plan(
            action,
            active.color,
            to,
            active.version,
            version,
            noop=f"{to} ({active.version}) is already live: nothing to do",
        )
    check_not_rejected(target.history, to, version, force)
    return Plan(
        action,
        active.color,
        to,
        active.version,
        version,
        GATED_SWITCH + _analysis(settings) if use_gates else ("switch",),
    )


def plan_rollback(
    settings: Settings, target: Target, use_gates: bool = True, force: bool = False
) -> Plan:
    """Back to the color that was live before the latest completed switch."""
    previous = previous_color(target.history)
    if previous is None:
        raise ColorgateError("no previous color in the history: nothing to roll back to")
    return plan_switch(settings, target, previous[0], use_gates, action="rollback", force=force)
