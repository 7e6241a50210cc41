"""Who gets which secret, and the app's own database role.

Secrets reach containers as read-only files in volumes of their own, never as
environment values, command lines or image layers:

    secrets-db          the database superuser's password (the database only)
    secrets-tools       every password the one-off dbtools need (the stack's, a managed
                        database's, a move target's)
    secrets-blue/green  each color's database URL, when the app reads it from a file
    dbca                a managed database's CA (a URL's sslrootcert)

They are written through the Engine API (so SSH hosts work the same) into a container
that is created, never started, and removed. On the stack's own PostgreSQL the app
connects, and migrates, as a role of its own (`<POSTGRES_USER>_app`), made and handed
what the superuser owns before a color starts or migrates.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from deploy import appsecrets, contract, edge, images, render
from deploy.config import Settings
from deploy.edge import locking
from deploy.errors import CommandError, ConfigError, NotFound
from deploy.target import connections, dbfacts, facts, runner
from deploy.urls import app_url, ca_file, shown_url, url_parts

_staged: set[tuple] = set()


def secret_files(
    settings: Settings,
    colors: dict[str, str],
    database: bool = False,
    tools: dict[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    """What stage_secrets writes, volume -> file -> text: the database superuser's
    password (`database`: for the database and the one-off dbtools) and the dbtools'
    other passwords (`tools`: a managed database's, name -> password), each of
    `colors`' database URL (color -> URL, when the app reads it from a file; "": the
    configured one), the app's own secrets of each of `colors`' copies (appsecrets) and a
    managed database's CA (a URL's sslrootcert, a file on this machine; one CA for both
    colors). Holds secrets."""
    app = settings.app
    files: dict[str, dict[str, str]] = {}
    if database and app.postgres:
        files[render.secrets_volume()] = {contract.DB_PASSWORD_FILE: settings.postgres_password}
        files["secrets-tools"] = {
            contract.DB_PASSWORD_FILE: settings.postgres_password,
            **(tools or {}),
        }
    urls = {color: url or settings.app_database_url() for color, url in colors.items()}
    for color, url in urls.items():
        db = app.database
        if db and db.reads_files:
            files[render.secrets_volume(color)] = {
                **(
                    {
                        contract.DB_URL_FILE: app_url(
                            url, db.scheme, managed=url != settings.local_database_url()
                        )
                    }
                    if db.file
                    else {}
                ),
                **(
                    {contract.DB_CLIENT_PASSWORD_FILE: url_parts(url)["password"]}
                    if "password_file" in dict(db.parts)
                    else {}
                ),
            }
    for color in colors:  # the app's own secrets: each copy gets only those named for its service
        for secret in app.secrets:
            for service in secret.services:
                files.setdefault(contract.app_secrets_volume(color, service), {})[secret.name] = (
                    appsecrets.value(settings, secret)
                )
    pems = {
        Path(root).read_text()
        for root in (ca_file(url) for url in urls.values() if url != settings.local_database_url())
        if root
    }
    if len(pems) > 1:
        raise ConfigError(
            "the two colors' database URLs name different CA files (sslrootcert): "
            "use one CA file for the managed database"
        )
    if pems:
        files["dbca"] = {"root.crt": pems.pop()}
    return files


def app_role_sql(settings: Settings) -> str:
    """SQL (run as the superuser, over the database container's socket) that makes the
    app's own role: it can log in, is no superuser, owns the app's database and every
    schema, table, view, sequence, function and type in it that the superuser owns (an
    existing database, where the app ran as the superuser, is handed over); its
    password is set again. Idempotent. Holds the role's password: send it on stdin."""
    role, owner = settings.app_db_user, settings.postgres_user
    password = settings.app_db_password().replace("'", "''")
    return f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
    CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
  END IF;
END $$;
ALTER ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{password}';
ALTER DATABASE "{settings.postgres_db}" OWNER TO "{role}";
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT format('ALTER SCHEMA %I OWNER TO "{role}"', nspname) AS s FROM pg_namespace
      WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = '{owner}') AND nspname NOT IN ('pg_catalog', 'information_schema', 'public')
        AND left(nspname, 3) <> 'pg_'
    UNION ALL
    SELECT format('ALTER %s %s OWNER TO "{role}"', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::regclass)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = '{owner}') AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND left(n.nspname, 3) <> 'pg_'
        -- a serial's or identity's sequence goes with its table
        AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                 AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT format('ALTER ROUTINE %s OWNER TO "{role}"', p.oid::regprocedure) FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = '{owner}') AND p.prokind IN ('f', 'p')
        AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND left(n.nspname, 3) <> 'pg_'
        AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    SELECT format('ALTER TYPE %s OWNER TO "{role}"', t.oid::regtype) FROM pg_type t
      JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE t.typowner = (SELECT oid FROM pg_roles WHERE rolname = '{owner}') AND t.typtype IN ('e', 'd', 'r')
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND left(n.nspname, 3) <> 'pg_'
        AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
  LOOP EXECUTE r.s; END LOOP;
END $$;
"""


def prepare_clients(settings: Settings, color: str, url: str) -> None:
    """Before `color`'s database clients start or migrate on `url`: the app's own role
    when that is the stack's own database, and their secret files. Once per process."""
    if (
        settings.app.postgres
        and url == settings.local_database_url()
        and ("role", settings.docker_host, settings.project) not in _staged
    ):
        runner.run(
            dbfacts.psql_cmd(facts.container(settings, settings.app.postgres.service), settings),
            input=app_role_sql(settings),
            env=settings.docker_env(),
            what="giving the app its own database role",
        )
        _staged.add(("role", settings.docker_host, settings.project))
    stage_secrets(settings, {color: url})


def stage_secrets(
    settings: Settings,
    colors: dict[str, str] | None = None,
    database: bool = False,
    tools: dict[str, str] | None = None,
) -> None:
    """Put secret_files into their volumes on the target, where the containers read them
    (read-only, see render) before they start: never in a container's environment, a
    command line or an image. Written through the Engine API into a container that is
    created, never started, and removed; the same files once per process."""
    files = secret_files(settings, colors or {}, database, tools)
    key = (
        settings.docker_host,
        settings.project,
        repr(sorted((v, sorted(f.items())) for v, f in files.items())),
    )
    if not files or key in _staged:
        return
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for volume, contents in files.items():
            for name, text in contents.items():
                data = (
                    text + "\n" if name == "root.crt" and not text.endswith("\n") else text
                ).encode()
                info = tarfile.TarInfo(f"{volume}/{name}")
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
    with _staging(settings, list(files), "staging secret files") as made:
        connections.engine(
            settings.docker_host,
            "put_archive",
            made,
            "/stage",
            buf.getvalue(),
            what="staging secret files",
        )
    _staged.add(key)


@contextlib.contextmanager
def _staging(settings: Settings, volumes: list[str], what: str, project: str = "") -> Iterator[str]:
    """A container (created, never started; removed after) with the project's `volumes`
    at /stage/VOLUME, each made when missing, labelled as compose labels its own (so
    compose adopts it): for files written or read through the Engine API."""
    host, binds, project = settings.docker_host, {}, project or settings.project
    for volume in volumes:
        name = f"{project}_{volume}"
        connections.engine(
            host,
            "create_volume",
            name,
            labels={"com.docker.compose.project": project, "com.docker.compose.volume": volume},
            what=what,
        )
        binds[name] = {"bind": f"/stage/{volume}", "mode": "rw"}
    host_config = connections.engine(host, "create_host_config", binds=binds, network_mode="none")
    made = connections.engine(
        host,
        "create_container",
        images.app_tag(settings, "edge", "latest"),
        command=["true"],
        host_config=host_config,
        what=what,
        # this project's, but no service of it (compose's `--remove-orphans` takes a leftover)
        labels={
            "com.docker.compose.project": settings.project,
            "com.docker.compose.service": "colorgate-stage",
            "org.colorgate.role": locking.STAGE_ROLE,
            locking.HOLDER_LABEL: locking.process_label(),
        },
    )
    try:
        yield made["Id"]
    finally:
        connections.engine(host, "remove_container", made["Id"], force=True, what=what)


APP_MARK = "app"  # in the edge's state: the app whose project this is


def check_project(settings: Settings, legacy: str = "colorgate") -> None:
    """Refuse, before anything starts, a compose project whose volumes another app made
    (a COLORGATE_PROJECT two apps share): the other app's database would be this one's.
    Read from the edge's state volume, when there is one (mark_project writes it). And
    with the project named after the app (no COLORGATE_PROJECT), a stack of this app
    under `legacy` (every app's project before) is named rather than started anew."""
    owner = _project_mark(settings, settings.project)
    if owner and owner != settings.app.name:
        raise ConfigError(
            f"the compose project {settings.project} holds the app {owner!r} (its volumes, its database), not "
            f"{settings.app.name!r}: set COLORGATE_PROJECT to a project of this app's own (default: its name), "
            f"or, if it is the same app renamed, give its compose file `name: {owner}`"
        )
    if (
        owner is None
        and not settings.raw.get("COLORGATE_PROJECT")
        and settings.project != legacy
        and _project_mark(settings, legacy) in ("", settings.app.name)
    ):
        raise ConfigError(
            f"this app runs as the compose project {legacy} (the default before projects were named after "
            f"their app), with its database there: set COLORGATE_PROJECT={legacy} in "
            f".env.{settings.profile}.local to go on with it"
        )


def _project_mark(settings: Settings, project: str) -> str | None:
    """The app the project's edge state names: None without such a volume, "" without a mark."""
    try:
        connections.engine(settings.docker_host, "inspect_volume", f"{project}_edge-state")
    except NotFound:
        return (
            None  # a new project (a volume made empty here would lose the edge's ownership of it)
        )
    with _staging(
        settings, ["edge-state"], "reading which app the project belongs to", project
    ) as made:
        try:
            stream, _ = connections.engine(
                settings.docker_host,
                "get_archive",
                made,
                f"/stage/edge-state/{APP_MARK}",
                what="reading the app mark",
            )
        except CommandError:
            return ""  # made by an earlier Colorgate: marked once the edge runs
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            return tar.extractfile(tar.getmembers()[0]).read().decode().strip()


def mark_project(settings: Settings) -> None:
    """Once the edge runs: its state names this app as the project's, unless it names one."""
    edge.in_edge(
        settings,
        [
            "sh",
            "-c",
            '[ -s "$1" ] || printf "%s\\n" "$2" > "$1"',
            "mark",
            f"{edge.STATE_DIR}/{APP_MARK}",
            settings.app.name,
        ],
        "marking the project as this app's",
    )


def forget(settings: Settings) -> None:
    """Before the volumes go (down, destroy): nothing counts as staged any more, and
    stage containers a killed command left (created, never started; compose does not
    see them), which would keep `down --volumes` from removing the secrets volumes,
    are removed."""
    _staged.clear()
    for container in facts.one_offs(settings, f"org.colorgate.role={locking.STAGE_ROLE}"):
        connections.engine(
            settings.docker_host,
            "remove_container",
            container,
            force=True,
            what="removing a stage leftover",
        )


def check_database(settings: Settings) -> dict:
    """Refuse when DATABASE_URL disagrees with where the target says the database is:
    deploying with the wrong one would split the data between two databases."""
    return check_database_record(settings, edge.read_database_record(settings))


def check_database_record(settings: Settings, record: dict) -> dict:
    """check_database on a record already read (pure)."""
    configured = shown_url(settings.database_url)
    local_file = f".env.{settings.profile}.local"
    if record["url"] != configured:
        if record["url"] == "local":
            raise ConfigError(
                f"DATABASE_URL points at {configured}, but this stack's database is still its own PostgreSQL: "
                f"move it with `invoke db.move --to URL`, or clear DATABASE_URL in {local_file}"
            )
        raise ConfigError(
            f"this stack's database moved to {record['url']} on {record.get('moved', '?')} (db.move), but DATABASE_URL "
            f"{'is empty' if not settings.database_url else 'points at ' + configured}: set DATABASE_URL to that URL, with its password, in {local_file}"
        )
    return record
