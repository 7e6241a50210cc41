#!/bin/sh
# Entrypoint of the one-off database tools. A managed database's CA, sent by Colorgate
# as text (the URL's sslrootcert is a file on the operator's machine), becomes the file
# libpq reads: PGSSLROOTCERT for the app's database, T_PGSSLROOTCERT for a db.move target.
set -eu
# the stack's own database's password: a file Colorgate stages (never in the environment)
if [ -z "${PGPASSWORD:-}" ] && [ -r /run/colorgate-secrets/postgres_password ]; then
  PGPASSWORD=$(cat /run/colorgate-secrets/postgres_password)
  export PGPASSWORD
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
