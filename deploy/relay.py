"""db.move's replication (replicate mode): the subscription, the relay, and everything
the relay opens.

The target copies the schema, then subscribes to a one-off publication (`subscribe`);
the cut-over (CUTOVER_SCRIPT, driven by move.py inside the write freeze) waits until
it caught up, copies sequence values and ends the replication; `unsubscribe` ends it
after a failure. While it runs, the managed database subscribes to the stack's own
PostgreSQL through a TCP relay (socat in a dbtools container, `dbrelay`) published on
COLORGATE_MOVE_RELAY_BIND:PORT. Three things keep that door narrow, each opened with
the relay and closed with it (`start`, `remove`):

    the database's rules  pg_hba.conf, first: through the relay only the one-off move
                          role, only over TLS; every other role coming through it is
                          rejected (PostgreSQL sees the relay's address, not the client's)
    the host firewall     on a host set up by server-setup.sh, published ports other
                          than 80/443 are dropped in the forward hook; the relay's port
                          is let in from COLORGATE_MOVE_RELAY_ALLOW only, as elements of
                          the set `inet colorgate relay` (with a timeout, so a host that
                          never runs Colorgate again does not keep them)
    the one-off role      its publication and slot (dropped by move.py and `drop`)

The target checks the server it reaches through the relay (COLORGATE_MOVE_RELAY_SSLMODE
verify-full, the default): against its system CAs (`sslrootcert=system`, PostgreSQL 16
or newer; a managed database has no file of ours to check against), for the name
COLORGATE_MOVE_RELAY_HOST. So while the relay runs, the stack's PostgreSQL serves a
certificate for that name from a public CA (`certificate`, `serve`): the files in
COLORGATE_MOVE_RELAY_CERT/KEY, or the edge's own ACME certificate, in its data
directory and named by ALTER SYSTEM, both taken back with the relay.

A move that died leaves the relay running: the next command's reconcile removes it
and all of the above (recover.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from deploy import bootstrap, dbtools, runner, stack, tls
from deploy.config import Settings
from deploy.errors import ColorgateError, ConfigError, MoveError
from deploy.facts import container as container_of, inspect as inspect_container, psql_cmd
from deploy.history import Record, at

ROLE = "colorgate_move"  # the one-off replication role, publication, slot and subscription
SERVICE = "dbrelay"

# The database's client rules while the relay runs, first in pg_hba.conf (the first
# line that matches decides): through the relay, only the move role, only over TLS, from
# the relay's own address(es); every other role coming through it is rejected. The
# block is removed with the relay; PostgreSQL reads the file again on pg_reload_conf().
# Edited in place (`cat >`), so its owner and mode stay whatever the image made them.
HBA = ("# colorgate-relay begin", "# colorgate-relay end")
HBA_SCRIPT = f"""set -eu
f="$PGDATA/pg_hba.conf"
t=$(mktemp)
{{
  if [ $# -gt 0 ]; then
    echo '{HBA[0]}'
    for ip in "$@"; do echo "hostssl all {ROLE} $ip/32 scram-sha-256"; done
    for ip in "$@"; do echo "host all all $ip/32 reject"; done
    echo '{HBA[1]}'
  fi
  awk '$0 == "{HBA[0]}" {{ skip = 1 }} !skip {{ print }} $0 == "{HBA[1]}" {{ skip = 0 }}' "$f"
}} > "$t"
cat "$t" > "$f"
rm -f "$t"
"""

# The host firewall's side (run with the host's network and NET_ADMIN only): `open PORT
# NET...` lets NET reach the published PORT, `close PORT NET...` takes that back. The
# set is server-setup.sh's; a host without it is said (`absent`) and left alone.
FIREWALL_SET = "inet colorgate relay"
FIREWALL_TIMEOUT = "24h"  # longer than any move; an element of one that died expires by itself
FIREWALL_SCRIPT = f"""set -eu
op=$1 port=$2
shift 2
nft list set {FIREWALL_SET} > /dev/null 2>&1 || {{ echo absent; exit 0; }}
for net in "$@"; do
  if [ "$op" = open ]; then
    nft add element {FIREWALL_SET} "{{ $net . $port timeout {FIREWALL_TIMEOUT} }}"
  else
    nft delete element {FIREWALL_SET} "{{ $net . $port }}" 2> /dev/null || true
  fi
done
echo present
"""

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

SCHEMA_SCRIPT = TARGET_FN + """set -eu
pg_dump --schema-only --no-owner --no-privileges --no-publications --no-subscriptions > /tmp/schema.sql
target q -f /tmp/schema.sql > /dev/null
"""

WAIT_SYNC_SQL = f"""SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
  WHERE s.subname = '{ROLE}' AND r.srsubstate <> 'r'"""


# The replicate cut-over, one dbtools container started before the freeze: it checks
# both databases answer and says `ready`, then waits for `go` on stdin (end of input:
# it stops, having changed nothing). Then, each step announced on stdout:
#   drained    no client of the local database is inside a statement (10 s at most)
#   caught-up  the subscriber applied everything up to the local WAL position taken
#              then, and every table's row count and the migrations are the same
#   finished   sequence values copied (logical replication does not carry them), the
#              subscription (and its slot on the local side), publication and role gone
CUTOVER_SCRIPT = TARGET_FN + """set -eu
printf '%s' "$CG_FACTS_SQL" > /tmp/facts.sql
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
echo caught-up
q -c "SELECT format('SELECT setval(%L, %s, true);', quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value)
      FROM pg_sequences WHERE last_value IS NOT NULL" > /tmp/sequences.sql
target q -f /tmp/sequences.sql > /dev/null
target q -c "DROP SUBSCRIPTION $1"
q > /dev/null <<'SQL'
""" + DROP_SQL.strip() + """
SQL
echo finished
"""

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


# --- the certificate the target checks --------------------------------------------

CERT_FILES = ("colorgate-relay.crt", "colorgate-relay.key")  # in the data directory while the relay runs
SYSTEM_ROOTS_SINCE = 16  # the first PostgreSQL whose libpq takes sslrootcert=system

# `on CHAIN` (the key on stdin) writes the files, owned as the data directory is;
# `off` removes them.
SERVE_SCRIPT = f"""set -eu
cd "$PGDATA"
if [ "$1" = on ]; then
  umask 077
  printf '%s' "$2" > {CERT_FILES[0]}
  cat > {CERT_FILES[1]}
  if [ "$(id -u)" = 0 ]; then chown "$(stat -c %u:%g .)" {CERT_FILES[0]} {CERT_FILES[1]}; fi
else
  rm -f {CERT_FILES[0]} {CERT_FILES[1]}
fi
"""
# ALTER SYSTEM cannot run in a transaction or a DO block: psql's \\if decides
SERVE_SQL = f"""ALTER SYSTEM SET ssl_cert_file = '{CERT_FILES[0]}';
ALTER SYSTEM SET ssl_key_file = '{CERT_FILES[1]}';
SELECT pg_reload_conf();
"""
UNSERVE_SQL = f"""SELECT current_setting('ssl_cert_file') = '{CERT_FILES[0]}' AS ours \\gset
\\if :ours
ALTER SYSTEM RESET ssl_cert_file;
ALTER SYSTEM RESET ssl_key_file;
SELECT pg_reload_conf();
\\endif
"""


def verify_full_possible(target_major: int) -> None:
    if target_major < SYSTEM_ROOTS_SINCE:
        raise MoveError(f"the target runs PostgreSQL {target_major}, which cannot check the relay's certificate against its "
                        f"system CAs (sslrootcert=system needs {SYSTEM_ROOTS_SINCE} or newer): set COLORGATE_MOVE_RELAY_SSLMODE=require "
                        "to let it subscribe over TLS unchecked, or use --mode dump")


def certificate(settings: Settings) -> tuple[str, str, str]:
    """(chain, key, where from) that the stack's PostgreSQL serves while the relay runs,
    checked for COLORGATE_MOVE_RELAY_HOST: the files the settings name, else the edge's."""
    host = settings.move_relay_host
    if settings.move_relay_cert:
        texts = []
        for name, value in (("COLORGATE_MOVE_RELAY_CERT", settings.move_relay_cert), ("COLORGATE_MOVE_RELAY_KEY", settings.move_relay_key)):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{name}={value} is not a file here: give the path of the relay's PEM "
                                  f"{'certificate chain' if name.endswith('CERT') else 'private key'} for {host}")
            texts.append(path.read_text())
        runner.add_secret(texts[1].strip())
        chain, key, origin = texts[0], texts[1], f"the relay's certificate ({settings.move_relay_cert})"
    else:
        chain, key, local = tls.key_pair(settings)
        if local:
            raise MoveError(f"the edge serves a certificate of its own local CA, which the target does not trust, so it could not "
                            f"check the relay: get an ACME certificate for {host} first (`invoke tls.init`), give one in "
                            "COLORGATE_MOVE_RELAY_CERT/KEY, or set COLORGATE_MOVE_RELAY_SSLMODE=require to subscribe unchecked")
        origin = "the edge's certificate"
    tls.check_pair(chain, key, host, origin, "COLORGATE_MOVE_RELAY_HOST", MoveError)
    return chain, key, origin


def serve(settings: Settings, material: tuple[str, str] | None, check: bool = True) -> None:
    """Make the stack's PostgreSQL serve `material` (chain, key), and wait until new
    connections get it; None: serve its own certificate again (if ours is set)."""
    container = container_of(settings, settings.app.postgres.service)
    env = settings.docker_env()
    if material is None:
        runner.run(psql_cmd(container, settings), input=UNSERVE_SQL, env=env, check=check,
                   what="giving the database its own certificate back")
        runner.run(["docker", "exec", container, "sh", "-c", SERVE_SCRIPT, "relay-cert", "off"], env=env, check=False)
        return
    chain, key = material
    runner.run(["docker", "exec", "-i", container, "sh", "-c", SERVE_SCRIPT, "relay-cert", "on", chain], input=key, env=env,
               what="giving the database the relay's certificate")
    runner.run(psql_cmd(container, settings), input=SERVE_SQL, env=env, what="naming the relay's certificate")
    deadline = time.monotonic() + 5
    while True:  # the reload is a signal: a session started after it has been handled sees the new setting
        shown = runner.run(psql_cmd(container, settings), input="SHOW ssl_cert_file;", env=env, what="reading ssl_cert_file").stdout.strip()
        if shown == CERT_FILES[0]:
            return
        if time.monotonic() > deadline:
            raise MoveError(f"the database does not take the relay's certificate (ssl_cert_file stays {shown!r}; set on its "
                            "command line?): leave ssl_cert_file to postgresql.conf, or set COLORGATE_MOVE_RELAY_SSLMODE=require")
        time.sleep(0.1)


def check_tls(settings: Settings, target_major: int) -> None:
    """Before a replicate move changes anything: the target can check the relay's
    certificate, and it is one it would accept (or the settings say it need not)."""
    if settings.move_relay_sslmode == "verify-full":
        verify_full_possible(target_major)
        _, _, origin = certificate(settings)
        runner.say(f"   relay TLS: the target checks {origin} for {settings.move_relay_host} against its system CAs (verify-full)")
    else:
        runner.say("   relay TLS: the target does not check the relay's certificate (COLORGATE_MOVE_RELAY_SSLMODE=require)")


def check(settings: Settings, network: str = "host") -> None:
    """Before a replicate move changes anything: on a host whose firewall
    (server-setup.sh) drops published ports, the allow-list must say who may reach
    the relay; without that firewall, say that only pg_hba guards it."""
    if firewall(settings, "check", network):
        if not settings.move_relay_allow:
            raise MoveError("this host's firewall (server-setup.sh) lets nobody reach the replication relay: set "
                            "COLORGATE_MOVE_RELAY_ALLOW to the addresses the managed database connects from (its provider lists them)")
        runner.say(f"   relay port {settings.move_relay_port}: the host firewall lets in {', '.join(settings.move_relay_allow)} only")
    else:
        runner.say(f"   relay port {settings.move_relay_port}: no Colorgate firewall on this host (server-setup.sh), so any address "
                   "reaches it; the database admits only the move role over TLS through it")


def firewall(settings: Settings, op: str, network: str = "host") -> bool:
    """Open (`open`) or close (`close`) the relay's port in the host firewall for the
    allow-list, or only look (`check`); True when the host has Colorgate's firewall.
    Runs nft in a one-off dbtools container on the target's engine with its host
    network (`network`: another namespace, for tests) and NET_ADMIN alone."""
    nets = settings.move_relay_allow if op != "check" else ()
    proc = runner.run(["docker", "run", "--rm", "--network", network, "--user", "0", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN",
                       "--security-opt", "no-new-privileges", "--read-only", "--label", f"com.docker.compose.project={settings.project}",
                       "--entrypoint", "sh", f"{settings.image_prefix}dbtools:latest",
                       "-c", FIREWALL_SCRIPT, "relay-firewall", op, str(settings.move_relay_port), *nets],
                      env=settings.docker_env(), check=op != "close", what="setting the host firewall for the relay")
    return proc.stdout.strip().endswith("present")


def start(settings: Settings, network: str = "host") -> None:
    """Start the relay, with the database's rules for it and the host firewall's."""
    env = stack.compose_env(settings, {})
    if bootstrap.local_engine(settings):
        bootstrap.check_port_free(settings, settings.move_relay_bind, settings.move_relay_port, "COLORGATE_MOVE_RELAY_PORT")
    runner.run(stack.compose_cmd(settings, *stack.ALL_PROFILES, "up", "--detach", "--no-deps", "--no-build", SERVICE),
               env=env, what="starting the replication relay")
    found = addresses(settings)
    if not found:
        remove(settings, network)
        raise ColorgateError("the replication relay shares no network with the database: see `invoke render`")
    _hba(settings, found)
    firewall(settings, "open", network)


def remove(settings: Settings, network: str = "host") -> None:
    """Remove the relay and what it opened (best effort: the database may be down or
    retired, the firewall's elements may have expired)."""
    firewall(settings, "close", network)
    serve(settings, None, check=False)
    _hba(settings, [], check=False)
    runner.run(stack.compose_cmd(settings, *stack.ALL_PROFILES, "rm", "--stop", "--force", SERVICE),
               env=stack.compose_env(settings, {}), check=False, what="removing the replication relay")


def container(settings: Settings) -> str:
    """The relay's container: compose's, on a Swarm too (a one-off container on the
    manager, beside the database, on the stack's overlay network; not a service)."""
    return f"{settings.project}-{SERVICE}-1"


def left(settings: Settings, states: dict) -> bool:
    """Whether a relay exists (facts.service_states lists it on one host only)."""
    if not settings.swarm:
        return SERVICE in states
    return bool(runner.engine(settings.docker_host, "containers", all=True, filters={"name": f"^/?{container(settings)}$"}))


def addresses(settings: Settings) -> list[str]:
    """The relay's addresses on the networks it shares with the database: where
    PostgreSQL sees its connections come from."""
    pg = settings.app.postgres
    names = [container(settings), container_of(settings, pg.service)]
    relay_nets, db_nets = (((inspect_container(settings, n).get("NetworkSettings") or {}).get("Networks") or {}) for n in names)
    return sorted({net["IPAddress"] for name, net in relay_nets.items() if name in db_nets and net.get("IPAddress")})


def _hba(settings: Settings, found: list[str], check: bool = True) -> None:
    container = container_of(settings, settings.app.postgres.service)
    runner.run(["docker", "exec", container, "sh", "-c", HBA_SCRIPT, "relay-hba", *found],
               env=settings.docker_env(), check=check, what="writing the database's rules for the relay")
    runner.run(psql_cmd(container, settings), input="SELECT pg_reload_conf();", env=settings.docker_env(), check=check,
               what="reloading the database's client rules")


def drop(settings: Settings) -> list[str]:
    """Drop db.move's publication, slot and role from the stack's own PostgreSQL, if
    there; returns what was there (`publication`, `slot`, `role`)."""
    local = dataclasses.replace(settings, database_url="")
    found = dbtools.psql(local, LEFTOVERS_SQL, what="looking for db.move's replication").stdout.split()
    if found:
        dbtools.psql(local, DROP_SQL, what="dropping db.move's publication, slot and role")
    return found


def target_env(url: str) -> dict[str, str]:
    """libpq variables for the target, as T_PG* (see TARGET_FN)."""
    return dbtools.url_env(url, prefix="T_")


def subscribe(settings: Settings, record: Record, url: str, password: str) -> None:
    with runner.step("copying the schema to the target"):
        dbtools.tools(settings, SCHEMA_SCRIPT, extra=target_env(url), what="copying the schema", major=dbtools.dump_major(settings))
    with runner.step("publishing the local database (one-off role, TLS-only relay)"):
        dbtools.psql(settings, DROP_SQL + f"""CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{password}';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE};
CREATE PUBLICATION {ROLE} FOR ALL TABLES;
""", what="creating the publication")
        start(settings)
        checked = settings.move_relay_sslmode == "verify-full"
        if checked:
            chain, key, origin = certificate(settings)
            serve(settings, (chain, key))
    tls_params = "sslmode=verify-full sslrootcert=system" if checked else "sslmode=require"
    conninfo = (f"host={settings.move_relay_host} port={settings.move_relay_port} dbname={settings.postgres_db} "
                f"user={ROLE} password={password} {tls_params} connect_timeout=10")
    with runner.step(f"subscribing the target (through {settings.move_relay_host}:{settings.move_relay_port}, {tls_params.split()[0]})"):
        created = dbtools.psql(settings, f"CREATE SUBSCRIPTION {ROLE} CONNECTION '{conninfo}' PUBLICATION {ROLE};", url, check=False)
        if created.returncode != 0:
            last = (runner.redact(created.stderr).strip().splitlines() or ["no output"])[-1]
            if checked and "certificate" in last:
                raise MoveError(f"the target does not accept the relay's certificate ({origin}; {last}): it checks it against its "
                                f"system CAs for {settings.move_relay_host}: give a certificate from a public CA for that name "
                                "(COLORGATE_MOVE_RELAY_CERT/KEY), or set COLORGATE_MOVE_RELAY_SSLMODE=require to subscribe unchecked")
            raise MoveError(f"the target could not subscribe through {settings.move_relay_host}:{settings.move_relay_port} ({last}): "
                            "set COLORGATE_MOVE_RELAY_HOST/PORT to an address the managed database reaches, and its addresses in COLORGATE_MOVE_RELAY_ALLOW")
    at(record, "initial_sync")
    with runner.step("copying the data (initial table sync)"):
        dbtools.tools(settings, f"""i=0
until [ "$(psql -X -A -t -v ON_ERROR_STOP=1 -c "{WAIT_SYNC_SQL}")" = 0 ]; do
  i=$((i + 1)); [ $i -lt 36000 ] || {{ echo "initial sync not done after an hour" >&2; exit 1; }}
  sleep 0.1
done""", extra=dbtools.url_env(url), what="waiting for the initial table sync")


def unsubscribe(settings: Settings, url: str, check: bool = True) -> None:
    """Drop the subscription (and its slot), the publication, the role, the relay.
    check=False: best effort, after a failure."""
    dropped = dbtools.psql(settings, f"DROP SUBSCRIPTION IF EXISTS {ROLE};", url, check=check, what="dropping the subscription")
    if dropped.returncode != 0:
        dbtools.psql(settings, TARGET_CLEANUP_SQL, url, check=False)
    dbtools.psql(settings, DROP_SQL, check=check, what="dropping the publication and the replication role")
    remove(settings)
