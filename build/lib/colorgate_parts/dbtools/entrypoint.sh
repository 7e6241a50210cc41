#!/bin/sh
# A throwaway PostgreSQL for `db.verify` (no network: it runs with --network none):
# initdb with POSTGRES_USER as owner of POSTGRES_DB, then serve on the local socket.
set -eu
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_DB:?POSTGRES_DB is required}"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$bin/initdb" --pgdata="$PGDATA" --username="$POSTGRES_USER" --auth-local=peer --encoding=UTF8 --locale=C.UTF-8 >/dev/null
printf 'colorgate postgres %s\n' "$POSTGRES_USER" >> "$PGDATA/pg_ident.conf"
printf 'local all all peer map=colorgate\n' > "$PGDATA/pg_hba.conf"
# The set-up server listens on a socket directory of its own: whoever waits for this
# PostgreSQL on /tmp (PGHOST) must not reach it and then find it shutting down.
mkdir -p /tmp/init
"$bin/pg_ctl" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp/init" start >/dev/null
echo "CREATE DATABASE :\"db\";" | "$bin/psql" -h /tmp/init -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 -q -v db="$POSTGRES_DB"
"$bin/pg_ctl" -w stop >/dev/null
exec "$bin/postgres" -c listen_addresses='' -c unix_socket_directories=/tmp
