"""Colorgate's database tools: one-off `dbtools` containers, connected by libpq's
environment to the app's PostgreSQL (the stack's own, or a managed one), and the
facts they read from it (every table's exact row count, the migration tool's table
included), which backups, verify, restore and db.move compare.

Passwords never travel in a container's environment or on a command line: they are
files in the `secrets-tools` volume (access.stage_secrets) that CG_<VAR>_FILE names.

pg_dump is of the server's PostgreSQL major (bases.tools_major; the server's version is
read once per process), pg_restore of the major that made the dump, and the dbtools
image of a major is made on first use (`dbtools:pg17`, from Debian's trixie;
`dbtools:latest` is 15's).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from deploy import access, bases
from deploy.config import Settings
from deploy.contract import SECRETS_DIR
from deploy.data.content import (
    CONTENT_SQL,
    END,
    FACTS_SQL,
    FREEZE_SQL,
    UNFREEZE_SQL,
    Facts,
    parse_facts,
)
from deploy.edge import locking
from deploy.errors import BadInput
from deploy.target import compose, runner
from deploy.target.dbfacts import psql_cmd
from deploy.target.facts import container as container_of
from deploy.urls import tls_params

PG_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE")


SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"  # in the dbtools image (Debian's ca-certificates)


def url_env(url: str, prefix: str = "") -> dict[str, str]:
    """libpq variables for a managed database's URL (`prefix` + PGHOST, ...): its
    sslmode (default verify-full) and the CA to check its certificate with: the URL's
    sslrootcert (a file on this machine, sent as text; the dbtools entrypoint makes it
    the file libpq reads), else the system's CAs."""
    parts = urlsplit(url)
    sslmode, root = tls_params(url)
    values = (
        parts.hostname or "",
        str(parts.port or 5432),
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        parts.path.strip("/"),
        sslmode,
    )
    env = {prefix + name: value for name, value in zip(PG_VARS, values, strict=True)}
    if root:
        env[f"CG_{prefix}PGSSLROOTCERT_PEM"] = Path(root).read_text()
    else:
        env[f"{prefix}PGSSLROOTCERT"] = SYSTEM_CAS
    return env


def require_postgres(settings: Settings) -> None:
    """The db.* tasks work on the app's PostgreSQL: refuse in one line when it has none."""
    db = settings.app.database
    if db is None:
        raise BadInput(
            f"the app ({settings.app.file}) declares no database (x-colorgate.database): there is nothing for db.* to do"
        )
    if db.kind != "postgresql":
        raise BadInput(
            f"the app's database {db.service!r} is not PostgreSQL (x-colorgate.database.kind: {db.kind}): "
            "the db.* tasks (backup, verify, restore, move) work with PostgreSQL only"
        )


# libpq's password variables: they reach a one-off dbtools container as files of its
# own volume (secrets-tools, see one_off), which CG_<VAR>_FILE names; never its environment
PASSWORD_VARS = ("PGPASSWORD", "T_PGPASSWORD")


def tools_env(
    settings: Settings, extra: dict[str, str] | None = None, major: int = bases.TOOLS_MAJOR
) -> tuple[dict[str, str], list[str]]:
    """Environment and `-e` flags for a dbtools container: libpq variables for the
    app's database (the stack's own, or DATABASE_URL), plus `extra`. Values travel in
    the environment, never on a command line; passwords not even there (PASSWORD_VARS).
    The container is of `major`'s tools: psql reaches a server of any version, but
    pg_dump and pg_restore want dump_major's or archive_major's."""
    require_postgres(settings)
    env = {
        **(url_env(settings.database_url) if settings.database_url else {}),
        **(extra or {}),
        "PGCONNECT_TIMEOUT": "10",
    }
    env.update(
        {f"CG_{var}_FILE": f"{SECRETS_DIR}/{var.lower()}" for var in PASSWORD_VARS if env.get(var)}
    )
    flags = [flag for name in env if name not in PASSWORD_VARS for flag in ("-e", name)]
    return {**compose.compose_env(settings, {}), **env, **_image_vars(settings, major)}, flags


def _image_vars(settings: Settings, major: int) -> dict[str, str]:
    """The compose variables that make `dbtools` the image of `major`'s tools."""
    return {
        "CG_DBTOOLS_TAG": bases.tools_tag(major),
        "CG_DBTOOLS_BASE": bases.postgres_base(major).tag(settings.base_source),
    }


def dump_major(settings: Settings) -> int:
    """The major of the tools that dump the app's database (made if missing)."""
    return ensure_tools(settings, bases.tools_major(server_version(settings) // 10000))


def archive_major(settings: Settings, manifest: dict) -> int:
    """The major of the tools that made a backup, whose pg_restore reads it (made if
    missing); manifests from before they named the server's version were made with 15's."""
    return ensure_tools(
        settings, bases.tools_major(manifest.get("postgres", bases.TOOLS_MAJOR * 10000) // 10000)
    )


def tools_image(settings: Settings, major: int) -> str:
    return f"{settings.image_prefix}dbtools:{bases.tools_tag(major)}"


def ensure_tools(settings: Settings, major: int) -> int:
    """Make the dbtools image of `major` where the engine lacks it (its base first):
    `up` makes only the default's. Returns `major`."""
    if major == bases.TOOLS_MAJOR or bases.image_exists(settings, tools_image(settings, major)):
        return major
    with runner.step(f"making the PostgreSQL {major} database tools (once per engine)"):
        bases.build_bases(settings, [bases.postgres_base(major)])
        runner.run(
            compose.compose_cmd(settings, "build", "dbtools"),
            env={**compose.compose_env(settings, {}), **_image_vars(settings, major)},
            what=f"building the PostgreSQL {major} tools",
            timeout=1200,
        )
    return major


_VERSIONS: dict[tuple[str, str, str], int] = {}


def server_version(settings: Settings) -> int:
    """The app's PostgreSQL's server_version_num (150004 for 15.4), read once per
    process: the stack's own in its container, a managed one with the default tools'
    psql (libpq reaches servers of any version)."""
    require_postgres(settings)
    key = (settings.docker_host, settings.project, settings.database_url)
    if key not in _VERSIONS:
        sql = "SHOW server_version_num;"
        if settings.database_url:
            out = psql(settings, sql, what="reading the server's version").stdout
        else:
            container = container_of(settings, settings.app.database.service)
            out = runner.run(
                psql_cmd(container, settings),
                input=sql,
                env=settings.docker_env(),
                what="reading the server's version",
            ).stdout
        _VERSIONS[key] = int(out.strip().splitlines()[-1])
    return _VERSIONS[key]


def tools_cmd(
    settings: Settings, *args: str, flags: list[str] | None = None, name: str = ""
) -> list[str]:
    return compose.compose_cmd(
        settings,
        "run",
        "--rm",
        "--no-deps",
        "-T",
        *(["--name", name] if name else []),
        "--label",
        f"{locking.HOLDER_LABEL}={locking.process_label()}",  # whose: a dead holder's are removed
        *(flags or tools_env(settings)[1]),
        "dbtools",
        *args,
    )


@contextlib.contextmanager
def one_off(settings: Settings, env: dict[str, str] | None = None) -> Iterator[str]:
    """A name for a one-off dbtools container (its passwords in `env`, from tools_env,
    staged as its files first), which is removed when the command ends
    while it runs (interrupted, timed out): `docker compose run` passes no SIGTERM on
    and its container would go on alone (a pg_restore finishing after the freeze
    ended, say). A SIGKILLed command cannot do this: see README "Reliability"."""
    name = f"{settings.project}-dbtools-run-{secrets.token_hex(4)}"
    access.stage_secrets(
        settings,
        database=True,
        tools={var.lower(): env[var] for var in PASSWORD_VARS if (env or {}).get(var)},
    )
    try:
        yield name
    except BaseException:
        # compose, killed mid-`run`, may have asked the engine for the container a moment
        # before: until it is removed, or clearly never came (3 s)
        deadline = time.monotonic() + 3
        while (
            runner.run(
                ["docker", "rm", "--force", name], env=settings.docker_env(), check=False
            ).returncode
            != 0
            and time.monotonic() < deadline
        ):
            time.sleep(0.25)
        raise


def tools(
    settings: Settings,
    script: str,
    *args: str,
    input: str | None = None,
    check: bool = True,
    what: str = "",
    extra: dict[str, str] | None = None,
    major: int = bases.TOOLS_MAJOR,
):
    """Run a shell script in a one-off dbtools container (networks `data` and `web`,
    volume `backups`), connected to the app's database by libpq's environment."""
    env, flags = tools_env(settings, extra, major)
    with one_off(settings, env) as name:
        return runner.run(
            tools_cmd(settings, "sh", "-c", script, "dbtools", *args, flags=flags, name=name),
            input=input,
            env=env,
            check=check,
            what=what,
        )


PSQL = ("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1")


# pg_restore of an archive (`$1`) into a database (`$2`) in one transaction, its options
# after them. Into a server older than the tools (a 16 restored with 17's), pg_restore's
# own connection would send `SET transaction_timeout`, which 16 lacks: there it writes a
# script, which psql runs without that line; the script's own BEGIN ... COMMIT commits
# only if it reached its end, and a pg_restore that failed half-way fails the restore.
RESTORE_SCRIPT = """set -eu
archive=$1; db=$2; shift 2
tools=$(pg_restore --version | sed -E 's/^[^0-9]*([0-9]+).*/\\1/')
server=$(psql -X -A -t -v ON_ERROR_STOP=1 -d "$db" -c 'SHOW server_version_num')
toc=${TMPDIR:-/tmp}/pg_restore.toc  # all but a freeze's refusal of writes (FREEZE_SQL), if it was taken during one
pg_restore -l "$archive" | grep -v colorgate_freeze > "$toc"
if [ $((server / 10000)) -ge "$tools" ]; then
  exec pg_restore --single-transaction --exit-on-error -L "$toc" -d "$db" "$@" "$archive"
fi
failed=${TMPDIR:-/tmp}/pg_restore.failed
rm -f "$failed"
{ pg_restore --single-transaction -L "$toc" -f - "$@" "$archive" || echo failed > "$failed"; } \\
  | sed '0,/^SET transaction_timeout = 0;$/{//d}' | psql -X -q -v ON_ERROR_STOP=1 -d "$db"
[ ! -e "$failed" ] || { echo "pg_restore: error: the archive could not be read to its end" >&2; exit 1; }
"""


def psql(settings: Settings, sql: str, url: str = "", what: str = "", check: bool = True):
    """Run SQL (stdin) with psql in a dbtools container against the app's database, or `url`."""
    return tools(
        settings,
        f"exec {' '.join(PSQL)}",
        input=sql,
        extra=url_env(url) if url else None,
        check=check,
        what=what,
    )


def local_sql(settings: Settings, sql: str, what: str):
    """Run SQL as the superuser in the stack's own PostgreSQL container (docker exec)."""
    return runner.run(
        psql_cmd(container_of(settings, settings.app.postgres.service), settings),
        input=sql,
        env=settings.docker_env(),
        what=what,
    )


def freeze_database(settings: Settings, frozen: bool) -> None:
    """Refuse (FREEZE_SQL) or take again (UNFREEZE_SQL) every write to the stack's own database."""
    local_sql(
        settings,
        FREEZE_SQL if frozen else UNFREEZE_SQL,
        "refusing writes in the local database"
        if frozen
        else "taking writes in the local database again",
    )


def content(settings: Settings, url: str = "") -> dict[str, str]:
    """Each table's content digest (CONTENT_SQL): of the stack's own database, or `url`'s."""
    out = (
        psql(settings, CONTENT_SQL, url, what="reading the target's content")
        if url
        else local_sql(settings, CONTENT_SQL, "reading the local database's content")
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def facts(settings: Settings, container: str) -> Facts:
    proc = runner.run(
        psql_cmd(container, settings),
        input=FACTS_SQL,
        env=settings.docker_env(),
        what="reading row counts",
    )
    return parse_facts([line for line in proc.stdout.splitlines() if line and line != END])
