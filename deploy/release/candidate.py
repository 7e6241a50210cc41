"""The candidate color of a release: started beside the live color with its versions,
waited for until ready and healthy, its migrations run, and gated."""

from __future__ import annotations

from dataclasses import asdict

from deploy import access, stack
from deploy.config import Settings
from deploy.data import migrations
from deploy.errors import ColorgateError, GateFailed
from deploy.release import gates
from deploy.release.decide import (
    Plan,
)
from deploy.release.history import (
    Record,
    timed,
)
from deploy.target import dbfacts, runner
from deploy.target.compose import compose_env


def gate_color(settings: Settings, record: Record, phase: str, color: str, version: str) -> None:
    with timed(record, f"{phase}_gates", f"{phase} gates on {color} ({version})"):
        result = gates.run_gates(settings, phase, color, version)
    record.gates += [{"phase": phase, **asdict(s)} for s in result.scenarios]
    for line in result.summary_lines():
        runner.say(line)
    if not result.passed:
        raise GateFailed(f"{phase} gates failed on {color} ({version}): {result.first_failure()}")


def gate(settings: Settings, record: Record, plan: Plan, phase: str) -> None:
    """One gate phase on the plan's candidate (db.move gates it before its freeze)."""
    gate_color(settings, record, phase, plan.to_color, plan.to_version)


def start_candidate(
    settings: Settings,
    plan: Plan,
    versions: dict[str, str],
    databases: dict[str, str] | None = None,
    wait: bool = True,
    held: list[str] | None = None,
) -> None:
    """Start the plan's candidate beside the live color and (unless not `wait`) wait
    until it is ready (wait_candidate). Services in `held` (db.move's workers) are
    created but not started: they start when traffic has moved."""
    candidate, version = plan.to_color, plan.to_version
    held = held or []
    started = [s for s in settings.app.color_services(candidate) if s not in held]
    with runner.step(
        f"starting {candidate} ({version}) beside {plan.from_color} ({plan.from_version})"
    ):
        # streams from its last time live end within the bound
        grace = stack.drain_color(settings, candidate)
        access.prepare_clients(
            settings, candidate, (databases or {}).get(candidate) or settings.app_database_url()
        )
        stack.start(
            settings,
            started,
            compose_env(settings, versions, databases),
            candidate,
            recreate=True,
            grace=grace,
            held=held,
            databases=databases,
        )
        if wait:
            wait_candidate(settings, plan, services=started)


def wait_candidate(
    settings: Settings, plan: Plan, recovering: bool = False, services: list[str] | None = None
) -> None:
    """Until the candidate's containers (or those of `services`) run and every health
    check of its routed services passes, asked from the edge (`recovering`: see
    stack.wait_ready)."""
    stack.wait_ready(
        settings,
        settings.app.color_services(plan.to_color) if services is None else services,
        recovering=recovering,
    )
    stack.wait_healthy(settings, plan.to_color)


def candidate_migrations(
    settings: Settings,
    record: Record,
    candidate: str,
    versions: dict[str, str],
    databases: dict[str, str] | None = None,
    verified_backup: bool = True,
    migrate: bool = True,
) -> None:
    """Apply the running candidate's pending migrations (after a verified backup), or
    refuse them when not `migrate`."""
    if not settings.app.migrations:
        return
    pending = dbfacts.pending_migrations(settings, candidate)  # None: unknown (no status command)
    if pending and not migrate:
        raise ColorgateError(
            f"{candidate} ({versions[candidate]}) brings migrations the database lacks: "
            "ship them first with `invoke deploy`, then move"
        )
    if pending is not False and migrate:
        migrations.run(
            settings,
            record,
            candidate,
            versions,
            databases,
            backup=verified_backup and settings.app.postgres,
        )
