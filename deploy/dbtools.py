"""Colorgate's database tools: one-off `dbtools` containers, connected by libpq's
environment to the app's PostgreSQL (the stack's own, or a managed one), and the
facts they read from it (every table's exact row count, the migration tool's table
included), which backups, verify, restore and db.move compare.

Passwords never travel in a container's environment or on a command line: they are
files in the `secrets-tools` volume (access.stage_secrets) that CG_<VAR>_FILE names.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from deploy import access, history, runner, stack
from deploy.config import Settings
from deploy.keys import tls_params
from deploy.contract import SECRETS_DIR
from deploy.errors import BadInput
from deploy.facts import psql_cmd


END = "--colorgate-end--"


# Per-table exact row counts (`table|count` lines), the migration tool's own table
# (schema_migrations, alembic_version, ...) included: whatever tool the app uses, a
# restore that lost a migration shows as a different count there.
FACTS_SQL = f"""SELECT format('SELECT %L, count(*) FROM %I.%I', schemaname || '.' || tablename, schemaname, tablename)
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \\gexec
SELECT '{END}';
"""


@dataclass(frozen=True)
class Facts:
    counts: dict[str, int]
    migrations: list[int]


def parse_facts(lines: list[str]) -> Facts:
    """`table|count` lines and a `migrations|1,2,3` line -> Facts."""
    counts, migrations = {}, []
    for line in lines:
        key, _, value = line.partition("|")
        if key == "migrations":
            migrations = [int(v) for v in value.split(",") if v]
        elif value.isdigit():
            counts[key] = int(value)
    return Facts(counts, migrations)


def compare(expected: Facts, got: Facts) -> list[tuple[str, str, str, bool]]:
    """Rows of (what, expected, restored, same) for the verify table."""
    rows = [(f"rows {t}", str(expected.counts.get(t, "-")), str(got.counts.get(t, "-")), expected.counts.get(t) == got.counts.get(t))
            for t in sorted(set(expected.counts) | set(got.counts))]
    if expected.migrations or got.migrations:  # manifests of earlier versions listed them apart
        rows.append(("migrations", ",".join(map(str, expected.migrations)) or "-", ",".join(map(str, got.migrations)) or "-",
                     expected.migrations == got.migrations))
    return rows


def format_compare(rows: list[tuple[str, str, str, bool]]) -> str:
    lines = [f"{'CHECK':<32} {'BACKUP':>12} {'RESTORED':>12}  RESULT"]
    lines += [f"{what:<32} {a:>12} {b:>12}  {'pass' if ok else 'FAIL'}" for what, a, b, ok in rows]
    return "\n".join(lines)


PG_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE")


SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"  # in the dbtools image (Debian's ca-certificates)


def url_env(url: str, prefix: str = "") -> dict[str, str]:
    """libpq variables for a managed database's URL (`prefix` + PGHOST, ...): its
    sslmode (default verify-full) and the CA to check its certificate with: the URL's
    sslrootcert (a file on this machine, sent as text; the dbtools entrypoint makes it
    the file libpq reads), else the system's CAs."""
    parts = urlsplit(url)
    sslmode, root = tls_params(url)
    values = (parts.hostname or "", str(parts.port or 5432), unquote(parts.username or ""), unquote(parts.password or ""),
              parts.path.strip("/"), sslmode)
    env = {prefix + name: value for name, value in zip(PG_VARS, values)}
    if root:
        env[f"CG_{prefix}PGSSLROOTCERT_PEM"] = Path(root).read_text()
    else:
        env[f"{prefix}PGSSLROOTCERT"] = SYSTEM_CAS
    return env


def require_postgres(settings: Settings) -> None:
    """The db.* tasks work on the app's PostgreSQL: refuse in one line when it has none."""
    db = settings.app.database
    if db is None:
        raise BadInput(f"the app ({settings.app.file}) declares no database (x-colorgate.database): there is nothing for db.* to do")
    if db.kind != "postgresql":
        raise BadInput(f"the app's database {db.service!r} is not PostgreSQL (x-colorgate.database.kind: {db.kind}): "
                             "the db.* tasks (backup, verify, restore, move) work with PostgreSQL only")


# libpq's password variables: they reach a one-off dbtools container as files of its
# own volume (secrets-tools, see one_off), which CG_<VAR>_FILE names; never its environment
PASSWORD_VARS = ("PGPASSWORD", "T_PGPASSWORD")


def tools_env(settings: Settings, extra: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Environment and `-e` flags for a dbtools container: libpq variables for the
    app's database (the stack's own, or DATABASE_URL), plus `extra`. Values travel in
    the environment, never on a command line; passwords not even there (PASSWORD_VARS)."""
    require_postgres(settings)
    env = {**(url_env(settings.database_url) if settings.database_url else {}), **(extra or {}), "PGCONNECT_TIMEOUT": "10"}
    env.update({f"CG_{var}_FILE": f"{SECRETS_DIR}/{var.lower()}" for var in PASSWORD_VARS if env.get(var)})
    flags = [flag for name in env if name not in PASSWORD_VARS for flag in ("-e", name)]
    return {**stack.compose_env(settings, {}), **env}, flags


def tools_cmd(settings: Settings, *args: str, flags: list[str] | None = None, name: str = "") -> list[str]:
    return stack.compose_cmd(settings, "run", "--rm", "--no-deps", "-T", *(["--name", name] if name else []),
                             "--label", f"{history.HOLDER_LABEL}={history.process_label()}",  # whose: a dead holder's are removed
                             *(flags or tools_env(settings)[1]), "dbtools", *args)


@contextlib.contextmanager
def one_off(settings: Settings, env: dict[str, str] | None = None) -> Iterator[str]:
    """A name for a one-off dbtools container (its passwords in `env`, from tools_env,
    staged as its files first), which is removed when the command ends
    while it runs (interrupted, timed out): `docker compose run` passes no SIGTERM on
    and its container would go on alone (a pg_restore finishing after the freeze
    ended, say). A SIGKILLed command cannot do this: see README "Reliability"."""
    name = f"{settings.project}-dbtools-run-{secrets.token_hex(4)}"
    access.stage_secrets(settings, database=True, tools={var.lower(): env[var] for var in PASSWORD_VARS if (env or {}).get(var)})
    try:
        yield name
    except BaseException:
        # compose, killed mid-`run`, may have asked the engine for the container a moment
        # before: until it is removed, or clearly never came (3 s)
        deadline = time.monotonic() + 3
        while runner.run(["docker", "rm", "--force", name], env=settings.docker_env(), check=False).returncode != 0 \
                and time.monotonic() < deadline:
            time.sleep(0.25)
        raise


def tools(settings: Settings, script: str, *args: str, input: str | None = None, check: bool = True, what: str = "",
          extra: dict[str, str] | None = None):
    """Run a shell script in a one-off dbtools container (networks `data` and `web`,
    volume `backups`), connected to the app's database by libpq's environment."""
    env, flags = tools_env(settings, extra)
    with one_off(settings, env) as name:
        return runner.run(tools_cmd(settings, "sh", "-c", script, "dbtools", *args, flags=flags, name=name), input=input,
                          env=env, check=check, what=what)


PSQL = ("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1")


def psql(settings: Settings, sql: str, url: str = "", what: str = "", check: bool = True):
    """Run SQL (stdin) with psql in a dbtools container against the app's database, or `url`."""
    return tools(settings, f'exec {" ".join(PSQL)}', input=sql, extra=url_env(url) if url else None, check=check, what=what)


def facts(settings: Settings, container: str) -> Facts:
    proc = runner.run(psql_cmd(container, settings), input=FACTS_SQL, env=settings.docker_env(), what="reading row counts")
    return parse_facts([line for line in proc.stdout.splitlines() if line and line != END])
