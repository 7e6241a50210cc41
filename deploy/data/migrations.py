"""The app's migrations (x-colorgate.migrations), run as one plan wherever they run: a
release's candidate, `invoke db.migrate` on the live color, and `up`.

    backup, verify, migrate        a backup that a real restore verified, then the command
    backup, migrate, keep_if_changed
                                   x-colorgate.migrations.cheap (cheap and idempotent): the
                                   backup verified only when the migration changed the
                                   schema (read before and after), else dropped
    migrate                        a database that holds nothing yet (or no PostgreSQL of
                                   the stack's): nothing to back up

A migration is not undone (it runs in the app's own transactions); a failure before it
migrates nothing, and the backup taken before it is kept for `invoke db.restore`. The
steps are phases of the operation around them (its record and lock say "migrations").
"""

from __future__ import annotations

from deploy import access, stack
from deploy.config import Settings
from deploy.data import db, verify
from deploy.errors import ColorgateError
from deploy.release import plans
from deploy.release.history import Record, timed
from deploy.target import compose, runner


def plan(backup: bool, cheap: bool) -> tuple[str, ...]:
    """The steps in order (pure)."""
    if not backup:
        return ("migrate",)
    return ("backup", "migrate", "keep_if_changed") if cheap else ("backup", "verify", "migrate")


UNDO = plans.Undo(steps={})


def run(
    settings: Settings,
    record: Record,
    color: str,
    versions: dict[str, str],
    databases: dict[str, str] | None = None,
    backup: bool = True,
) -> None:
    """`color`'s migration command, after the backup `plan` asks for."""
    cheap = bool(settings.app.migrations and settings.app.migrations.cheap)
    plans.execute(
        plan(backup, cheap),
        Migrating(settings, record, color, versions, databases, cheap),
        None,
        UNDO,
    )


class Migrating:
    """The migration's steps on the real target (`plan` orders them)."""

    def __init__(
        self,
        settings: Settings,
        record: Record,
        color: str,
        versions: dict[str, str],
        databases: dict[str, str] | None,
        cheap: bool,
    ):
        self.settings, self.record, self.color, self.versions, self.databases = (
            settings,
            record,
            color,
            versions,
            databases,
        )
        self.cheap, self.name, self.schema = cheap, "", ""

    def backup(self) -> None:
        what = "backing up the database before migrating" + (
            " (verified if the schema changes)" if self.cheap else ""
        )
        with timed(self.record, "backup", what):
            self.name = db.backup(self.settings)["name"]
            if self.cheap:
                self.schema = verify.schema_fingerprint(self.settings)
        self.record.detail = f"backup {self.name}"

    def verify(self) -> None:
        with timed(self.record, "verify", f"verifying backup {self.name}"):
            verified = verify.verify(self.settings, self.name)
        if not verified.usable:
            raise ColorgateError(
                f"the pre-migration backup {self.name} did not verify ({verified.reason}): not migrating"
            )

    def migrate(self) -> None:
        """The command in a one-off container of the color's image, kept until the next
        (`invoke logs migrations`)."""
        m, s = self.settings.app.migrations, self.settings
        access.prepare_clients(
            s, self.color, (self.databases or {}).get(self.color) or s.app_database_url()
        )
        name = stack.migrations_container(s, self.color)
        with timed(self.record, "migrations", "applying the database migrations"):
            runner.run(
                ["docker", "rm", "--force", name],
                env=s.docker_env(),
                check=False,
                what="removing the last migrations",
            )
            runner.run(
                compose.compose_cmd(
                    s,
                    "run",
                    "--name",
                    name,
                    "--no-deps",
                    "-T",
                    s.app.copy_name(m.service, self.color),
                    *m.command,
                ),
                env=compose.compose_env(s, self.versions, self.databases),
                what="database migrations",
            )

    def keep_if_changed(self) -> None:
        """cheap: the backup verified when the schema changed, dropped when it did not."""
        if verify.schema_fingerprint(self.settings) == self.schema:
            db.drop_backup(self.settings, self.name)
            self.record.detail = (
                f"the migrations changed no table (migrations.cheap): backup {self.name} dropped"
            )
            runner.say(f"-- the migrations changed no table: backup {self.name} dropped")
            return
        with timed(
            self.record,
            "verify",
            f"verifying backup {self.name} (the migrations changed the schema)",
        ):
            verified = verify.verify(self.settings, self.name)
        if not verified.usable:
            raise ColorgateError(
                f"the migrations changed the schema, but the backup {self.name} taken before them did not verify "
                f"({verified.reason}): take one now with `invoke db.backup`"
            )
