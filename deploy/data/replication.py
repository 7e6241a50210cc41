"""db.move's replication (replicate mode): the target copies the schema, then subscribes
to a one-off publication of the stack's own PostgreSQL through the relay (deploy/data/relay.py,
which keeps that door narrow); the cut-over (CUTOVER_SCRIPT, driven by move.py inside
the write freeze) waits until it caught up, copies sequence values and ends the
replication; `unsubscribe` ends it after a failure, `drop` removes what a move that died
left on the local side."""

from __future__ import annotations

import dataclasses

from deploy.config import Settings
from deploy.data import dbtools, relay, relaycert
from deploy.data.relay import ROLE
from deploy.edge.locking import at
from deploy.errors import MoveError
from deploy.release.history import Record
from deploy.target import runner

# A subscriber that still runs reconnects to its slot: its sender is ended until the slot
# stays free (5 s at most), then the slot is dropped.
DROP_SQL = f"""DROP PUBLICATION IF EXISTS {ROLE};
DO $$ DECLARE i int := 0; BEGIN
  WHILE i < 50 AND EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{ROLE}' AND active) LOOP
    PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{ROLE}' AND active_pid IS NOT NULL;
    PERFORM pg_sleep(0.1);
    i := i + 1;
  END LOOP;
END $$;
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{ROLE}' AND NOT active;
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
    EXECUTE 'DROP OWNED BY {ROLE}';
    EXECUTE 'DROP ROLE {ROLE}';
  END IF;
END $$;
"""
LEFTOVERS_SQL = f"""SELECT 'publication' FROM pg_publication WHERE pubname = '{ROLE}'
UNION ALL SELECT 'slot' FROM pg_replication_slots WHERE slot_name = '{ROLE}'
UNION ALL SELECT 'role' FROM pg_roles WHERE rolname = '{ROLE}';
"""


# Shell helpers for scripts that talk to both databases: libpq's PG* variables point at
# the local one, T_PG* at the target; `target CMD` runs CMD against the target.
TARGET_FN = """target() { PGHOST=$T_PGHOST PGPORT=$T_PGPORT PGUSER=$T_PGUSER PGPASSWORD=$T_PGPASSWORD \
PGDATABASE=$T_PGDATABASE PGSSLMODE=$T_PGSSLMODE PGSSLROOTCERT=$T_PGSSLROOTCERT "$@"; }
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
"""

SCHEMA_SCRIPT = (
    TARGET_FN
    + """set -eu
pg_dump --schema-only --no-owner --no-privileges --no-publications --no-subscriptions > /tmp/schema.sql
target q -f /tmp/schema.sql > /dev/null
"""
)

WAIT_SYNC_SQL = f"""SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
  WHERE s.subname = '{ROLE}' AND r.srsubstate <> 'r'"""


# The replicate cut-over, one dbtools container started before the freeze: it checks
# both databases answer and says `ready`, then waits for `go` on stdin (end of input:
# it stops, having changed nothing). Then, each step announced on stdout:
#   drained    no client of the local database is inside a statement (10 s at most)
#   caught-up  the subscriber applied everything up to the local WAL position taken
#              then, every table's row count and the migrations are the same, and then
#              every table's content (dbtools.CONTENT_SQL, in $CG_CONTENT_SQL)
#   finished   sequence values copied (logical replication does not carry them), the
#              subscription (and its slot on the local side), publication and role gone
CUTOVER_SCRIPT = (
    TARGET_FN
    + """set -eu
printf '%s' "$CG_FACTS_SQL" > /tmp/facts.sql
printf '%s' "$CG_CONTENT_SQL" > /tmp/content.sql
q -c "SELECT 1" > /dev/null && target q -c "SELECT 1" > /dev/null
echo ready
read -r go || exit 2
[ "$go" = go ] || exit 2
i=0
until [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
             AND backend_type = 'client backend' AND state <> 'idle'")" = 0 ]; do
  i=$((i + 1)); [ $i -lt 500 ] || { echo "local database sessions still busy after 10 s" >&2; exit 1; }
  sleep 0.02
done
echo drained
lsn=$(q -c "SELECT pg_current_wal_lsn()")
q -f /tmp/facts.sql > /tmp/local
i=0
while :; do
  applied=$(q -c "SELECT coalesce(bool_and(replay_lsn >= '$lsn'), false) FROM pg_stat_replication WHERE application_name = '$1'")
  if [ "$applied" = t ]; then
    target q -f /tmp/facts.sql > /tmp/target
    cmp -s /tmp/local /tmp/target && break
  fi
  i=$((i + 1)); [ $i -lt 3000 ] || { echo "the target did not catch up within 60 s (applied: $applied)" >&2; exit 1; }
  sleep 0.02
done
q -f /tmp/content.sql > /tmp/local &
reading=$!
target q -f /tmp/content.sql > /tmp/target
wait "$reading"
cmp -s /tmp/local /tmp/target || {
  echo "the target differs from the local database, row by row, in $(diff /tmp/local /tmp/target | grep '^[<>]' | cut -c3- | cut -d'|' -f1 | sort -u | paste -s -d ' ' -)" >&2
  exit 1
}
echo caught-up
q -c "SELECT format('SELECT setval(%L, %s, true);', quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value)
      FROM pg_sequences WHERE last_value IS NOT NULL" > /tmp/sequences.sql
target q -f /tmp/sequences.sql > /dev/null
target q -c "DROP SUBSCRIPTION $1"
q > /dev/null <<'SQL'
"""
    + DROP_SQL.strip()
    + """
SQL
echo finished
"""
)

# After a failure: when the publisher cannot be reached to drop the slot, detach the
# subscription from it first (the source side then drops the slot itself).
TARGET_CLEANUP_SQL = f"""DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_subscription WHERE subname = '{ROLE}') THEN
    EXECUTE 'ALTER SUBSCRIPTION {ROLE} DISABLE';
    EXECUTE 'ALTER SUBSCRIPTION {ROLE} SET (slot_name = NONE)';
    EXECUTE 'DROP SUBSCRIPTION {ROLE}';
  END IF;
END $$;
"""


def drop(settings: Settings) -> list[str]:
    """Drop db.move's publication, slot and role from the stack's own PostgreSQL, if
    there; returns what was there (`publication`, `slot`, `role`)."""
    local = dataclasses.replace(settings, database_url="")
    found = dbtools.psql(
        local, LEFTOVERS_SQL, what="looking for db.move's replication"
    ).stdout.split()
    if found:
        dbtools.psql(local, DROP_SQL, what="dropping db.move's publication, slot and role")
    return found


def target_env(url: str) -> dict[str, str]:
    """libpq variables for the target, as T_PG* (see TARGET_FN)."""
    return dbtools.url_env(url, prefix="T_")


def subscribe(settings: Settings, record: Record, url: str, password: str) -> None:
    with runner.step("copying the schema to the target"):
        dbtools.tools(
            settings,
            SCHEMA_SCRIPT,
            extra=target_env(url),
            what="copying the schema",
            major=dbtools.dump_major(settings),
        )
    with runner.step("publishing the local database (one-off role, TLS-only relay)"):
        dbtools.psql(
            settings,
            DROP_SQL
            + f"""CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{password}';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE};
CREATE PUBLICATION {ROLE} FOR ALL TABLES;
""",
            what="creating the publication",
        )
        relay.start(settings)
        checked = settings.move_relay_sslmode == "verify-full"
        if checked:
            chain, key, origin = relaycert.certificate(settings)
            relay.serve(settings, (chain, key))
    tls_params = "sslmode=verify-full sslrootcert=system" if checked else "sslmode=require"
    conninfo = (
        f"host={settings.move_relay_host} port={settings.move_relay_port} dbname={settings.postgres_db} "
        f"user={ROLE} password={password} {tls_params} connect_timeout=10"
    )
    with runner.step(
        f"subscribing the target (through {settings.move_relay_host}:{settings.move_relay_port}, {tls_params.split()[0]})"
    ):
        created = dbtools.psql(
            settings,
            f"CREATE SUBSCRIPTION {ROLE} CONNECTION '{conninfo}' PUBLICATION {ROLE};",
            url,
            check=False,
        )
        if created.returncode != 0:
            raise _not_subscribed(settings, created.stderr, origin if checked else "")
    at(record, "initial_sync")
    with runner.step("copying the data (initial table sync)"):
        dbtools.tools(
            settings,
            f"""i=0
until [ "$(psql -X -A -t -v ON_ERROR_STOP=1 -c "{WAIT_SYNC_SQL}")" = 0 ]; do
  i=$((i + 1)); [ $i -lt 36000 ] || {{ echo "initial sync not done after an hour" >&2; exit 1; }}
  sleep 0.1
done""",
            extra=dbtools.url_env(url),
            what="waiting for the initial table sync",
        )


def _not_subscribed(settings: Settings, stderr: str, origin: str) -> MoveError:
    """Why the target could not subscribe, and the fix: a relay certificate it does not
    accept (`origin`: where that certificate came from, when it is checked), or an
    address it cannot reach."""
    last = (runner.redact(stderr).strip().splitlines() or ["no output"])[-1]
    if origin and "certificate" in last:
        return MoveError(
            f"the target does not accept the relay's certificate ({origin}; {last}): it checks it against its "
            f"system CAs for {settings.move_relay_host}: give a certificate from a public CA for that name "
            "(COLORGATE_MOVE_RELAY_CERT/KEY), or set COLORGATE_MOVE_RELAY_SSLMODE=require to subscribe unchecked"
        )
    return MoveError(
        f"the target could not subscribe through {settings.move_relay_host}:{settings.move_relay_port} ({last}): "
        "set COLORGATE_MOVE_RELAY_HOST/PORT to an address the managed database reaches, and its addresses in COLORGATE_MOVE_RELAY_ALLOW"
    )


def unsubscribe(settings: Settings, url: str, check: bool = True) -> None:
    """Drop the subscription (and its slot), the publication, the role, the relay.
    check=False: best effort, after a failure."""
    dropped = dbtools.psql(
        settings,
        f"DROP SUBSCRIPTION IF EXISTS {ROLE};",
        url,
        check=check,
        what="dropping the subscription",
    )
    if dropped.returncode != 0:
        dbtools.psql(settings, TARGET_CLEANUP_SQL, url, check=False)
    dbtools.psql(
        settings, DROP_SQL, check=check, what="dropping the publication and the replication role"
    )
    relay.remove(settings)
