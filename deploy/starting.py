"""Starting a stack (`invoke up`, `invoke apply`): its plan from the facts (plan_up: images,
the edge, the shared services, the live color, what changes beside it, the migrations)
and the steps that carry it out and undo it, executed by deploy.release.plans."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from deploy import access, bootstrap, edge, images, stack
from deploy.apply import Beside, attach_networks, beside
from deploy.config import Settings
from deploy.data import db, migrations, verify
from deploy.edge import acme
from deploy.edge.locking import lock, recorded
from deploy.errors import ColorgateError, CommandError
from deploy.release import plans, recover
from deploy.release.history import Record
from deploy.target import compose, dbfacts, facts, runner, targets


def up(settings: Settings, version: str | None = None, yes: bool = False) -> None:
    """`invoke up` and `invoke apply` (which CI may run on every push): start_stack, on a
    running stack under the release lock throughout (it may start what a running
    db.move stopped, recreate shared services: never beside a release), with what
    changes beside the colors read and checked first (`beside`: refused when unsafe, --yes
    on staging and production to recreate), and its migrations guarded as a release's are:
    under the lock, and, when the database holds anything, after a backup a restore
    verified. A new stack takes the lock once its edge runs, for its migrations."""
    running = facts.edge_down(settings) is None
    with lock(settings, "up") if running else contextlib.nullcontext() as held:
        if held is not None:
            # first, what a run that died left (a hold at the edge, say)
            recover.on_lock(settings, held)

        def run_migrations(color: str, versions: dict[str, str]) -> None:
            m = settings.app.migrations
            current = facts.service_states(settings).get(settings.app.copy_name(m.service, color))
            if (
                current
                and current.state == "running"
                and dbfacts.pending_migrations(settings, color) is False
            ):
                return  # at head: nothing to back up
            with contextlib.nullcontext() if held is not None else lock(settings, "up"):
                record = Record("migrate", color, color, versions[color], versions[color])
                with recorded(settings, record):
                    migrations.run(
                        settings,
                        record,
                        color,
                        versions,
                        backup=settings.app.postgres and db.has_tables(settings),
                    )
                    record.outcome = "migrated"

        start_stack(settings, version, run_migrations=run_migrations, apply=True, yes=yes)
    if targets.of(settings).renews_on_server:
        acme.ensure_renewer(settings)  # once an ACME certificate is in use


def plan_up(
    edge_running: bool,
    project_check: bool,
    migrations: bool,
    attach: bool = False,
    backup: bool = False,
    hold: bool = False,
) -> tuple[str, ...]:
    """`up`'s steps in order (pure): the images of Colorgate's own and the shared services,
    the database's secrets staged; on a running stack what changes beside its live color
    (Beside): the live color attached to new networks, a verified backup and the
    database's clients held at the edge when it is recreated; the edge and the shared
    services started and given the contract's routes (the hold released); then the live
    color: its images, its database clients, its migrations, started, and on a new stack
    routed to."""
    return (
        "infra_images",
        *(("check_project",) if project_check else ()),
        "stage_secrets",
        *(("attach_networks",) if attach else ()),
        *(("backup_database",) if backup else ()),
        *(("hold_clients",) if hold else ()),
        *(("old_routes",) if edge_running else ()),
        "start_infra",
        "routes",
        *(("release_hold",) if hold else ()),
        "check_database",
        "color_images",
        "clients",
        *(("migrations",) if migrations else ()),
        "start_color",
        "route",
    )


def undo_up(fresh: bool) -> plans.Undo:
    """On a stack that was not running, a failure stops what this run started (volumes
    kept); on a running one, a hold at the edge ends whatever happens."""
    if fresh:
        return plans.Undo(steps={"infra_images": "tear_down"})
    return plans.Undo(steps={"hold_clients": "release_hold"}, ends={"release_hold": "hold_clients"})


def start_stack(
    settings: Settings,
    version: str | None = None,
    run_migrations: Callable[[str, dict[str, str]], None] | None = None,
    apply: bool = False,
    yes: bool = False,
) -> None:
    """Start the edge, PostgreSQL and the live color (the initial color on a new stack, at
    `version`: default the newest built, or v1), the edge given the contract's routes; the
    migrations through `run_migrations(color, versions)` when given (up guards them as a
    release does). Idempotent: on a running stack only what changed beside the colors
    changes (with `apply`: read and checked first, `beside`), and the live color is never
    recreated."""
    states = facts.service_states(settings)
    fresh = not any(s.state == "running" for s in states.values())
    edge_running = states.get("edge") is not None and states["edge"].state == "running"
    if bootstrap.local_engine(settings) and not edge_running:
        bootstrap.check_ports_free(settings)
    active = edge.read_active(settings) if edge_running else None
    changing = (
        beside(settings, active.color, yes)
        if active and apply
        else Beside(active.color if active else "")
    )
    do = Starting(settings, states, edge_running, version, run_migrations, changing)
    steps = plan_up(
        edge_running,
        targets.of(settings).checks_project,
        bool(settings.app.migrations),
        changing.attach,
        changing.backup,
        bool(changing.hold),
    )
    plans.execute(steps, do, None, undo_up(fresh))


class Starting:
    """`up`'s steps on the real target (plan_up orders them)."""

    def __init__(
        self,
        settings: Settings,
        states: dict,
        edge_running: bool,
        version: str | None,
        run_migrations,
        changing: Beside,
    ):
        self.settings, self.version, self.run_migrations, self.changing = (
            settings,
            version,
            run_migrations,
            changing,
        )
        self.versions = facts.running_versions(states)
        # after `db.retire-local` the stack's own PostgreSQL stays stopped
        self.infra = stack.infra_services(
            settings,
            retired=edge_running and bool(edge.read_database_record(settings).get("retired")),
        )
        self.live: edge.Active | None = None
        self.color, self.held_since = "", 0.0

    def infra_images(self) -> None:
        with runner.step(
            ("pulling" if self.settings.registry else "building")
            + f" the images of {', '.join(self.infra)}"
        ):
            stack.ensure_infra_images(self.settings, self.versions, self.version)

    def check_project(self) -> None:
        access.check_project(self.settings)

    def stage_secrets(self) -> None:
        access.stage_secrets(self.settings, database=True)

    def attach_networks(self) -> None:
        live = self.changing.live
        with runner.step(f"attaching {live} and what is recreated to the contract's new networks"):
            attach_networks(
                self.settings, [*self.settings.app.color_services(live), *self.changing.recreated]
            )

    def backup_database(self) -> None:
        """A verified backup, unless the database holds nothing yet: asked only now, once
        the tools can reach it on the contract's networks (attach_networks)."""
        database = self.changing.hold
        if not db.has_tables(self.settings):
            runner.say(
                f"-- {database} holds no table yet: nothing to back up before it is recreated"
            )
            return
        with runner.step(f"backing up the database before {database} is recreated"):
            manifest = db.backup(self.settings)
            verified = verify.verify(self.settings, manifest["name"])
        if not verified.usable:
            raise ColorgateError(
                f"the backup {manifest['name']} did not verify ({verified.reason}): not recreating {database}"
            )

    def hold_clients(self) -> None:
        """The database's clients' requests held at the edge (for up to
        COLORGATE_HOLD_SECONDS each), once those in flight are answered (5 s at most: a
        stream never is)."""
        with runner.step(
            f"holding the requests to {self.changing.hold}'s clients at the edge while it restarts"
        ):
            edge.set_frozen(self.settings, True, database=True)
            self.held_since = time.monotonic()
            edge.drain(
                self.settings, self.changing.live, seconds=min(5, self.settings.drain_seconds)
            )

    def release_hold(self) -> None:
        edge.set_frozen(self.settings, False)
        runner.say(f"ok requests pass again: held for {time.monotonic() - self.held_since:.1f}s")

    def old_routes(self) -> None:
        """An edge of an earlier Colorgate keeps its routes elsewhere: for the one replacing it."""
        edge.sync_routes(
            self.settings,
            edge.edge_routes_file(self.settings.app),
            reload=bool(edge.read_routes_line(self.settings).strip()),
        )

    def start_infra(self) -> None:
        with runner.step(f"starting {' and '.join(self.infra)}"):
            try:
                stack.start(
                    self.settings, self.infra, compose.compose_env(self.settings, self.versions)
                )
            except CommandError as exc:
                raise stack.explain_compose_error(self.settings, exc) from None
            stack.wait_ready(self.settings, self.infra)

    def routes(self) -> None:
        edge.sync_routes(self.settings, edge.edge_routes_file(self.settings.app))

    def check_database(self) -> None:
        access.mark_project(self.settings)
        access.check_database(self.settings)

    def color_images(self) -> None:
        """The live color (on a new stack the initial one, at the version asked for) and its images."""
        s, self.live = self.settings, edge.read_active(self.settings)
        if self.live:
            self.color, self.versions[self.live.color] = self.live.color, self.live.version
        else:
            self.color = s.initial_color
            self.versions[self.color] = (
                self.versions.get(self.color)
                or self.version
                or (images.release_tags(s) or ["v1"])[-1]
            )
        with runner.step(f"preparing {self.color} ({self.versions[self.color]}) images"):
            stack.ensure_release_images(s, self.color, self.versions)

    def clients(self) -> None:
        access.prepare_clients(self.settings, self.color, self.settings.app_database_url())

    def migrations(self) -> None:
        if self.run_migrations is not None:
            self.run_migrations(self.color, self.versions)
            return
        version = self.versions[
            self.color
        ]  # a stack started by hand (tests): its first migrations, not recorded
        migrations.run(
            self.settings,
            Record("migrate", self.color, self.color, version, version),
            self.color,
            self.versions,
            backup=False,
        )

    def start_color(self) -> None:
        s, color = self.settings, self.color
        with runner.step(f"starting {color} ({self.versions[color]})"):
            stack.start(
                s,
                s.app.color_services(color),
                compose.compose_env(s, self.versions),
                color,
                keep=bool(self.live),
            )
            stack.wait_ready(s, s.app.color_services(color))
            stack.wait_healthy(s, color)  # the contract's checks, from the edge: not only Docker's

    def route(self) -> None:
        if self.live is None:
            with runner.step(f"routing traffic to {self.color}"):
                edge.write_active(self.settings, self.color, self.versions[self.color])

    def tear_down(self) -> None:
        runner.say("!! stopping what this run started (volumes kept)")
        targets.of(self.settings).tear_down(self.settings)
