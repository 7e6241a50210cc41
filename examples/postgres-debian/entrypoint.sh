#!/bin/sh
# PostgreSQL for the Colorgate stack, run as the postgres user. On the first start with
# an empty data volume: initdb with POSTGRES_USER as superuser (password from the file
# POSTGRES_PASSWORD_FILE names, as Colorgate delivers it, else from POSTGRES_PASSWORD;
# never on a command line) and create POSTGRES_DB.
# Network clients need the password (SCRAM).
# Nothing publishes this port: compose puts PostgreSQL on an internal network (only
# the relay of `db.move --mode replicate` reaches it from outside, while it runs).
set -eu
: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  [ -r "$POSTGRES_PASSWORD_FILE" ] || { echo "postgres: POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE cannot be read" >&2; exit 1; }
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE is required}"
: "${POSTGRES_DB:?POSTGRES_DB is required}"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
export PGDATA

# Client authentication, written at every start so an existing cluster gets the current
# rules too. The role colorgate_move exists only while `invoke db.move --mode replicate`
# runs (the managed database subscribes through a published relay): Colorgate then puts
# lines first that let it in over TLS from the relay's address only (and nothing else
# through the relay); from anywhere else it is rejected.
write_hba() {
  cat > "$PGDATA/pg_hba.conf" <<'HBA'
local all all peer map=colorgate
host all colorgate_move 0.0.0.0/0 reject
host all colorgate_move ::/0 reject
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
HBA
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # Built aside and moved into place only when complete: an interrupted first start
  # leaves no half-made cluster behind.
  echo "postgres: initializing a new cluster in $PGDATA"
  final=$PGDATA
  PGDATA=$final.init
  rm -rf "$PGDATA"
  umask 077
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  "$bin/initdb" --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=peer \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  # Inside the container the postgres OS user may connect as the database owner
  # (peer map); from the networks only with the password.
  printf 'colorgate postgres %s\n' "$POSTGRES_USER" >> "$PGDATA/pg_ident.conf"
  write_hba
  # on a socket of its own: the health check (pg_isready -h /tmp) must not take this
  # set-up server, stopped again below, for the real one
  setup=$(mktemp -d)
  "$bin/pg_ctl" -w -o "-c listen_addresses='' -c unix_socket_directories=$setup" start >/dev/null
  echo "CREATE DATABASE :\"db\";" | "$bin/psql" -h "$setup" -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 -q -v db="$POSTGRES_DB"
  "$bin/pg_ctl" -w stop >/dev/null
  rm -rf "$setup"
  mv "$PGDATA" "$final"
  PGDATA=$final
  echo "postgres: cluster ready"
fi

write_hba
# A self-signed TLS key made here, at the first start (never one baked into an image).
if [ ! -s "$PGDATA/server.key" ]; then
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=colorgate-postgres" -keyout "$PGDATA/server.key" -out "$PGDATA/server.crt" 2>/dev/null)
fi
unset POSTGRES_PASSWORD
# TLS where the build has it (Debian's does; one without OpenSSL has an empty ssl_library)
ssl=on
[ -n "$("$bin/postgres" -D "$PGDATA" -C ssl_library 2>/dev/null)" ] || ssl=off
# wal_level=logical: `db.move --mode replicate` can publish without a restart.
exec "$bin/postgres" -c listen_addresses='*' -c unix_socket_directories=/tmp \
  -c password_encryption=scram-sha-256 -c wal_level=logical -c ssl=$ssl "$@"
