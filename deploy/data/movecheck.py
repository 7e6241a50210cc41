"""db.move's checks, before anything changes: the target's URL, both servers' facts
(CHECK_SQL, read by parse_check), whether the target can take the move (check_compatible:
not older, empty, allowed to subscribe), and psql's connection errors said as one line
that names the cause and the fix."""

from __future__ import annotations

import dataclasses

from deploy.config import Settings
from deploy.data import dbtools, relay, relaycert
from deploy.errors import ConfigError, MoveError
from deploy.target import runner
from deploy.urls import database_url, shown_url

CHECK_SQL = """SELECT 'version|' || current_setting('server_version_num');
SELECT 'tables|' || count(*) || '|' || coalesce(min(schemaname || '.' || tablename), '')
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema');
SELECT 'subscribe|' || (rolsuper OR EXISTS (SELECT FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'member')
  AND r.rolname IN ('pg_create_subscription', 'rds_superuser', 'cloudsqlsuperuser', 'azure_pg_admin')))
  FROM pg_roles WHERE rolname = current_user;
SELECT 'noidentity|' || count(*) || '|' || coalesce(min(n.nspname || '.' || c.relname), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
    AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)));
"""


def check_url(url: str) -> str:
    try:
        return database_url(url.strip())
    except ValueError as exc:
        raise ConfigError(f"the target URL {exc}") from None


def explain_connect_error(stderr: str, shown: str) -> str:
    """psql's complaint about a connection -> one line naming the cause and the fix."""
    text = stderr.strip()
    last = (text.splitlines() or ["no output"])[-1]
    if "could not translate host name" in text:
        return f"cannot reach the target database {shown}: its host name does not resolve; check the URL"
    if any(
        s in text
        for s in (
            "Connection refused",
            "timeout expired",
            "No route to host",
            "Network is unreachable",
            "Connection timed out",
            "could not connect to server",
        )
    ):
        return f"cannot reach the target database {shown}: nothing answers there ({last.strip()}); check the host, port and firewall"
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return f"the target database {shown} refused the credentials: check the user and password in the URL"
    if "no pg_hba.conf entry" in text:
        return f"the target database {shown} does not accept connections from this host: allow it in the managed service's access rules"
    if "database" in text and "does not exist" in text:
        return (
            f"the database named in {shown} does not exist on the target: create it (empty) first"
        )
    if "certificate verify failed" in text:
        return (
            f"the target database {shown} has a certificate that is not signed by the CA in the URL's sslrootcert "
            "(or the system's, without one): give its provider's CA file as sslrootcert=PATH in the URL"
        )
    if "does not match host name" in text:
        return (
            f"the target database {shown} has a certificate that does not name the URL's host ({last.strip()}): "
            "use the host name the certificate names"
        )
    if "SSL" in text:
        return f"TLS to the target database {shown} failed ({last.strip()}): check sslmode and sslrootcert in the URL"
    return f"cannot use the target database {shown}: {last.strip()}"


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    version: int  # server_version_num, e.g. 150004
    tables: int
    first_table: str
    can_subscribe: bool  # superuser, or a role that may create subscriptions (PG16+, managed services' admin roles)
    # tables with no replica identity (no primary key): how many, the first
    without_identity: tuple[int, str] = (
        0,
        "",
    )

    @property
    def major(self) -> int:
        return self.version // 10000  # 150004 -> 15; 90624 (9.6) -> 9


def parse_check(out: str) -> ServerFacts:
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition("|")
        fields[key] = value
    count, _, first = fields.get("tables", "0|").partition("|")
    bare, _, first_bare = fields.get("noidentity", "0|").partition("|")
    return ServerFacts(
        int(fields["version"]),
        int(count),
        first,
        fields.get("subscribe") in ("t", "true"),
        (int(bare or 0), first_bare),
    )


def check_compatible(source: ServerFacts, target: ServerFacts, shown: str, mode: str) -> None:
    """Refuse a target that is older than the source, not empty, or (replicate) cannot subscribe."""
    if target.major < source.major:
        raise MoveError(
            f"the target database {shown} runs PostgreSQL {target.major}, older than the local {source.major}: "
            f"a dump or replication may not apply there; use PostgreSQL {source.major} or newer"
        )
    if target.tables:
        raise MoveError(
            f"the target database {shown} is not empty ({target.tables} table(s), e.g. {target.first_table}): "
            "db.move only fills an empty database; point it at a new one"
        )
    if mode == "replicate" and not target.can_subscribe:
        raise MoveError(
            f"the user in {shown} may not create a subscription: "
            "use the managed service's admin user, or --mode dump"
        )
    count, first = source.without_identity
    if mode == "replicate" and count:
        raise MoveError(
            f"{count} local table(s) have no replica identity (no primary key), e.g. {first}: while replication "
            f"copies them the app's UPDATE and DELETE there would fail; add a primary key, or `ALTER TABLE {first} "
            "REPLICA IDENTITY FULL`, or move with --mode dump"
        )


def preflight(settings: Settings, url: str, mode: str) -> ServerFacts:
    """Everything that can be checked before anything changes."""
    shown = shown_url(url)
    target = dbtools.psql(settings, CHECK_SQL, url, check=False)
    if target.returncode != 0:
        raise MoveError(explain_connect_error(runner.redact(target.stderr), shown))
    source = parse_check(
        dbtools.psql(settings, CHECK_SQL, what="checking the local database").stdout
    )
    found = parse_check(target.stdout)
    check_compatible(source, found, shown, mode)
    runner.say(
        f"   target {shown}: PostgreSQL {found.major}, empty, credentials accepted (local: PostgreSQL {source.major})"
    )
    if mode == "replicate":
        relaycert.check_tls(settings, found.major)
        relay.check(settings)
    return found
