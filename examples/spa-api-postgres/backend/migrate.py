"""Apply the versioned SQL migrations in ./migrations, in order, exactly once each.

Files are named NNN_description.sql. Each runs in its own transaction and is recorded
in schema_migrations with its checksum; an applied file whose content changed is an
error (write a new migration instead). A PostgreSQL advisory lock keeps two runs from
migrating at the same time. Connection settings come from DATABASE_URL, else libpq's environment.

Usage: python3 migrate.py [--status | --check]
  --status  print applied=N pending=M
  --check   exit 0 when at head, 3 when migrations are pending (Colorgate's status command)
"""

import hashlib
import os
import pathlib
import re
import sys

import psycopg2

MIGRATIONS = pathlib.Path(__file__).with_name("migrations")
NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
LOCK_ID = 7_418_001  # arbitrary, constant: the advisory lock for migrations


def discover():
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = NAME.match(path.name)
        if not match:
            sys.exit(f"migrate: bad migration file name {path.name}: use NNN_description.sql")
        found.append((int(match[1]), path))
    return found


def main(argv):
    path = os.environ.get("DATABASE_URL_FILE")  # how Colorgate delivers the URL; else DATABASE_URL
    url = open(path).read().strip() if path else os.environ.get("DATABASE_URL", "")
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
    cur.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    cur.execute("SELECT version, name, checksum FROM schema_migrations")
    applied = {v: (n, c) for v, n, c in cur.fetchall()}
    pending = []
    for version, path in discover():
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        if version in applied:
            if applied[version][1] != checksum:
                sys.exit(f"migrate: {path.name} changed after it was applied: add a new migration instead")
            continue
        pending.append((version, path, checksum))
    if "--status" in argv or "--check" in argv:
        print(f"applied={len(applied)} pending={len(pending)}")
        if "--check" in argv and pending:
            sys.exit(3)
        return
    for version, path, checksum in pending:
        conn.autocommit = False
        with conn.cursor() as tx:
            tx.execute(path.read_text())
            tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (version, path.name, checksum),
            )
        conn.commit()
        conn.autocommit = True
        print(f"migrate: applied {path.name}", flush=True)
    print(f"migrate: at head ({len(applied) + len(pending)} migrations)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
