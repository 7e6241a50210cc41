"""Backup facts and the verify table, on captured psql output (no Docker)."""

from datetime import datetime, timezone

from deploy import db


def test_facts_parsing():
    facts = db.parse_facts(["public.notes|12", "public.schema_migrations|2", "migrations|1,2", "noise"])
    assert facts == db.Facts({"public.notes": 12, "public.schema_migrations": 2}, [1, 2])
    assert db.parse_facts(["migrations|"]).migrations == []


def test_compare_flags_each_difference():
    rows = db.compare(db.Facts({"a": 1, "b": 2}, [1, 2]), db.Facts({"a": 1, "c": 5}, [1]))
    assert rows == [("rows a", "1", "1", True), ("rows b", "2", "-", False), ("rows c", "-", "5", False),
                    ("migrations", "1,2", "1", False)]
    assert "FAIL" in db.format_compare(rows)


def test_backup_names_sort_by_time():
    a = db.backup_name(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    b = db.backup_name(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone.utc))
    assert a == "20260102T030405000006Z" and a < b


def test_dump_runs_inside_the_network_from_the_exported_snapshot():
    from deploy import config

    s = config.load("development", root=config.project_root(), environ={"COLORGATE_PROJECT": "shop"})
    cmd = db.tools_cmd(s, "sh", "-c", db.DUMP_SCRIPT, "dump", "N", "SNAP")
    assert cmd[cmd.index("run"):cmd.index("run") + 5] == ["run", "--rm", "--no-deps", "-T", "dbtools"]
    assert '--snapshot="$2"' in db.DUMP_SCRIPT and "--format=custom" in db.DUMP_SCRIPT
    assert db.psql_cmd("shop-postgres-1", s)[:4] == ["docker", "exec", "-i", "shop-postgres-1"]
