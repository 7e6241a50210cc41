"""What db.move compares and how the local database refuses writes: the SQL that reads a
database's row counts and content digests (each answer closed by END), their parse and
comparison, and the freeze's refusal of writes (and its removal)."""

from __future__ import annotations

from dataclasses import dataclass

END = "--colorgate-end--"


# Per-table exact row counts (`table|count` lines), the migration tool's own table
# (schema_migrations, alembic_version, ...) included: whatever tool the app uses, a
# restore that lost a migration shows as a different count there.
FACTS_SQL = f"""SELECT format('SELECT %L, count(*) FROM %I.%I', schemaname || '.' || tablename, schemaname, tablename)
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \\gexec
SELECT '{END}';
"""


# Per-table content digests (`table|md5` lines): the md5 of each row's text, in order, with
# the settings that shape that text fixed, so one table on two servers (their own time zone
# or date style) has one digest. A row count misses an UPDATE; this does not.
CONTENT_SQL = f"""SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 3;
SET bytea_output = 'hex';
SELECT format('SELECT %L, coalesce(md5(string_agg(md5(colorgate_row::text), '''' ORDER BY md5(colorgate_row::text))), ''-'') '
              'FROM %I.%I colorgate_row',
              schemaname || '.' || tablename, schemaname, tablename)
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \\gexec
SELECT '{END}';
"""


# While db.move (or db.restore) holds the edge's write freeze, the stack's own database
# takes no write from anybody: a statement trigger on every table refuses INSERT, UPDATE,
# DELETE and TRUNCATE in every session, those already open too, so a write that did not
# come through the edge (a GET handler's, a WebSocket's, a scheduler's) fails loudly
# instead of landing in a database the app is leaving; reads go on. All of it is named
# colorgate_freeze (a schema, its function, each trigger): UNFREEZE_SQL takes it away
# (the next command does, after a run that died), and a restore of a backup taken
# meanwhile leaves it out (RESTORE_SCRIPT). Triggers an earlier freeze left are armed
# again by the function alone.
FREEZE_SQL = """SET lock_timeout = '5s';
SET client_min_messages = warning;
BEGIN;
CREATE SCHEMA IF NOT EXISTS colorgate_freeze;
CREATE OR REPLACE FUNCTION colorgate_freeze.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'this database takes no writes now: the app moves to another one, or it is being restored (Colorgate)'
    USING ERRCODE = 'read_only_sql_transaction';
END $$;
SELECT format('CREATE TRIGGER colorgate_freeze BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I.%I '
              'FOR EACH STATEMENT EXECUTE FUNCTION colorgate_freeze.refuse()', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'colorgate_freeze')
    AND n.nspname NOT LIKE 'pg_toast%' AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'colorgate_freeze')
  ORDER BY 1 \\gexec
COMMIT;
"""


# Taking writes again never waits for a table: the function the triggers call lets every
# write through at once (no table lock), then each trigger is dropped where its table's
# lock comes at once (a long reader, a restore stopped mid-wait may hold it); one
# left lets writes through until a later UNFREEZE_SQL takes it, the schema with the last.
UNFREEZE_SQL = """SET client_min_messages = warning;
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_namespace WHERE nspname = 'colorgate_freeze') THEN
    CREATE OR REPLACE FUNCTION colorgate_freeze.refuse() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NULL; END $f$;
  END IF;
END $$;
SET lock_timeout = '200ms';  -- waiting, a DROP TRIGGER would hold up the table's readers behind it
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT n.nspname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'colorgate_freeze' LOOP
    BEGIN
      EXECUTE format('DROP TRIGGER colorgate_freeze ON %I.%I', r.nspname, r.relname);
    EXCEPTION WHEN lock_not_available THEN
      RAISE WARNING 'colorgate: the refusal of writes stays on %.% (it lets them through) until its lock comes', r.nspname, r.relname;
    END;
  END LOOP;
  IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'colorgate_freeze') THEN
    DROP FUNCTION IF EXISTS colorgate_freeze.refuse();
    DROP SCHEMA IF EXISTS colorgate_freeze;
  END IF;
END $$;
"""


@dataclass(frozen=True)
class Facts:
    counts: dict[str, int]
    migrations: list[int]


def parse_facts(lines: list[str]) -> Facts:
    """`table|count` lines and a `migrations|1,2,3` line -> Facts."""
    counts, migrations = {}, []
    for line in lines:
        key, _, value = line.partition("|")
        if key == "migrations":
            migrations = [int(v) for v in value.split(",") if v]
        elif value.isdigit():
            counts[key] = int(value)
    return Facts(counts, migrations)


def compare(expected: Facts, got: Facts) -> list[tuple[str, str, str, bool]]:
    """Rows of (what, expected, restored, same) for the verify table."""
    rows = [
        (
            f"rows {t}",
            str(expected.counts.get(t, "-")),
            str(got.counts.get(t, "-")),
            expected.counts.get(t) == got.counts.get(t),
        )
        for t in sorted(set(expected.counts) | set(got.counts))
    ]
    if expected.migrations or got.migrations:  # manifests of earlier versions listed them apart
        rows.append(
            (
                "migrations",
                ",".join(map(str, expected.migrations)) or "-",
                ",".join(map(str, got.migrations)) or "-",
                expected.migrations == got.migrations,
            )
        )
    return rows


def format_compare(rows: list[tuple[str, str, str, bool]]) -> str:
    lines = [f"{'CHECK':<32} {'BACKUP':>12} {'RESTORED':>12}  RESULT"]
    lines += [f"{what:<32} {a:>12} {b:>12}  {'pass' if ok else 'FAIL'}" for what, a, b, ok in rows]
    return "\n".join(lines)
