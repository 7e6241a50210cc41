#!/bin/sh
# Entrypoint of the one-off database tools. A managed database's CA, sent by Colorgate
# as text (the URL's sslrootcert is a file on the operator's machine), becomes the file
# libpq reads: PGSSLROOTCERT for the app's database, T_PGSSLROOTCERT for a db.move target.
set -eu
# Passwords are files Colorgate stages in this container's own volume, never in its
# environment: a managed database's (PGPASSWORD, T_PGPASSWORD for a db.move target) as
# CG_*_FILE names them, else the stack's own database's.
if [ -n "${CG_PGPASSWORD_FILE:-}" ]; then
  PGPASSWORD=$(cat "$CG_PGPASSWORD_FILE")
  export PGPASSWORD
elif [ -r /run/colorgate-secrets/postgres_password ]; then
  PGPASSWORD=$(cat /run/colorgate-secrets/postgres_password)
  export PGPASSWORD
fi
if [ -n "${CG_T_PGPASSWORD_FILE:-}" ]; then
  T_PGPASSWORD=$(cat "$CG_T_PGPASSWORD_FILE")
  export T_PGPASSWORD
fi
if [ -n "${CG_PGSSLROOTCERT_PEM:-}" ]; then
  printf '%s\n' "$CG_PGSSLROOTCERT_PEM" > /tmp/pg-root.crt
  export PGSSLROOTCERT=/tmp/pg-root.crt
fi
if [ -n "${CG_T_PGSSLROOTCERT_PEM:-}" ]; then
  printf '%s\n' "$CG_T_PGSSLROOTCERT_PEM" > /tmp/pg-target-root.crt
  export T_PGSSLROOTCERT=/tmp/pg-target-root.crt
fi
unset CG_PGSSLROOTCERT_PEM CG_T_PGSSLROOTCERT_PEM
exec "$@"
