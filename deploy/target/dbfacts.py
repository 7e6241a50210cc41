"""Facts of the app's database as the target shows it: where a color's database is, its
pending migrations (the app's own status command), and the roles PostgreSQL holds."""

from __future__ import annotations

from dataclasses import dataclass

from deploy.config import Settings
from deploy.errors import CommandError
from deploy.target import runner
from deploy.target.facts import ServiceState, container, reads


def color_database(settings: Settings, states: dict[str, ServiceState], color: str) -> str | None:
    """The database `color`'s clients use (`local` or a URL without password); None without one."""
    return next((s.database for s in states.values() if s.color == color and s.database), None)


def migration_status_cmd(settings: Settings, color: str) -> list[str]:
    """The app's status command in `color`'s container. A docker CLI process, not the
    Engine API: an exec's hijacked stream through docker's ssh:// transport broke its
    pipe now and then (seen in the SSH test), and this runs once per gate phase."""
    m = settings.app.migrations
    return [
        "docker",
        "exec",
        container(settings, settings.app.copy_name(m.service, color)),
        *m.status,
    ]


def pending_migrations(settings: Settings, color: str) -> bool | None:
    """Whether `color`'s image brings migrations the database lacks: the app's status
    command, run in its running container, exits 0 at head and non-zero otherwise.
    None when the app has no status command (then migrations always run)."""
    m = settings.app.migrations
    if not m:
        return False
    if not m.status:
        return None
    if not reads(settings).runs_here(settings, settings.app.copy_name(m.service, color)):
        return None  # (a Swarm's copy with no task on the manager): unknown
    proc = runner.run(
        migration_status_cmd(settings, color),
        env=settings.docker_env(),
        check=False,
        what="migration status",
    )
    if proc.returncode in (125, 126, 127):  # docker or the command itself could not run
        raise CommandError(
            migration_status_cmd(settings, color),
            proc.returncode,
            proc.stdout,
            proc.stderr,
            "migration status",
        )
    return proc.returncode != 0


def psql_cmd(container: str, settings: Settings) -> list[str]:
    """psql inside a PostgreSQL container over its socket, as its superuser (no password, no port)."""
    return [
        "docker",
        "exec",
        "-i",
        container,
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        settings.postgres_user,
        "-d",
        settings.postgres_db,
    ]


@dataclass(frozen=True)
class DatabaseRoles:
    """The app's own role in the stack's PostgreSQL, and who is connected over the network."""

    role_super: bool | None  # None: the role does not exist
    database_owner: str
    sessions: tuple[tuple[str, str, bool], ...]  # (client address, role, superuser)


def database_roles(settings: Settings) -> DatabaseRoles:
    """Read over the database container's socket, as its superuser."""
    db = settings.app.postgres
    sql = (
        f"SELECT 'owner|' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database();\n"
        f"SELECT 'role|' || rolsuper FROM pg_roles WHERE rolname = '{settings.app_db_user}';\n"
        "SELECT 'session|' || host(a.client_addr) || '|' || a.usename || '|' || r.rolsuper FROM pg_stat_activity a "
        "JOIN pg_roles r ON r.oid = a.usesysid WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL;\n"
    )
    out = runner.run(
        psql_cmd(container(settings, db.service), settings),
        input=sql,
        env=settings.docker_env(),
        what="reading the database's roles",
    ).stdout
    role_super, owner, sessions = None, "", []
    for kind, _, rest in (line.partition("|") for line in out.splitlines()):
        if kind == "owner":
            owner = rest
        elif kind == "role":
            role_super = rest == "t"
        elif kind == "session":
            address, user, sup = rest.split("|")
            sessions.append((address, user, sup == "t"))
    return DatabaseRoles(role_super, owner, tuple(sessions))
