"""Backup facts and the verify table, on captured psql output (no Docker)."""

import dataclasses
from datetime import datetime, timezone

import pytest

from deploy import db, dbtools, facts, keys


def test_facts_parsing():
    facts = dbtools.parse_facts(["public.notes|12", "public.schema_migrations|2", "migrations|1,2", "noise"])
    assert facts == dbtools.Facts({"public.notes": 12, "public.schema_migrations": 2}, [1, 2])
    assert dbtools.parse_facts(["migrations|"]).migrations == []


def test_compare_flags_each_difference():
    rows = dbtools.compare(dbtools.Facts({"a": 1, "b": 2}, [1, 2]), dbtools.Facts({"a": 1, "c": 5}, [1]))
    assert rows == [("rows a", "1", "1", True), ("rows b", "2", "-", False), ("rows c", "-", "5", False),
                    ("migrations", "1,2", "1", False)]
    assert "FAIL" in dbtools.format_compare(rows)


def test_backup_names_sort_by_time():
    a = db.backup_name(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    b = db.backup_name(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone.utc))
    assert a == "20260102T030405000006Z" and a < b


def test_dump_runs_inside_the_network_from_the_exported_snapshot():
    from deploy import config

    s = config.load("development", root=config.project_root(), environ={"COLORGATE_PROJECT": "shop"})
    cmd = dbtools.tools_cmd(s, "sh", "-c", db.DUMP_SCRIPT, "dump", "N", "SNAP")
    assert cmd[cmd.index("run"):cmd.index("run") + 4] == ["run", "--rm", "--no-deps", "-T"]
    assert cmd[cmd.index("dbtools") + 1:] == ["sh", "-c", db.DUMP_SCRIPT, "dump", "N", "SNAP"]
    assert '--snapshot="$2"' in db.DUMP_SCRIPT and "--format=custom" in db.DUMP_SCRIPT
    assert facts.psql_cmd("shop-postgres-1", s)[:4] == ["docker", "exec", "-i", "shop-postgres-1"]


def test_a_managed_database_is_reached_through_the_environment_never_argv():
    from deploy import access, config

    url = "postgresql://app:s%40cret@db.example.com:6543/shop?sslmode=require"
    s = config.load("development", root=config.project_root(), environ={"DATABASE_URL": url})
    env, flags = dbtools.tools_env(s)
    assert {k: env[k] for k in dbtools.PG_VARS} == {"PGHOST": "db.example.com", "PGPORT": "6543", "PGUSER": "app",
                                             "PGPASSWORD": "s@cret", "PGDATABASE": "shop", "PGSSLMODE": "require"}
    cmd = dbtools.tools_cmd(s, "psql", flags=flags)
    assert not any("s@cret" in part or "s%40cret" in part for part in cmd)
    # not even in the container's environment: a file of its own volume, which the entrypoint reads
    assert "PGPASSWORD" not in cmd and cmd[cmd.index("CG_PGPASSWORD_FILE") - 1] == "-e"
    assert env["CG_PGPASSWORD_FILE"] == "/run/colorgate-secrets/pgpassword"
    assert access.secret_files(s, {}, database=True, tools={"pgpassword": "s@cret"})["secrets-tools"]["pgpassword"] == "s@cret"
    # the stack's own database: the dbtools service's environment is used as it is
    local_env, local_flags = dbtools.tools_env(config.load("development", root=config.project_root(), environ={}))
    assert "PGHOST" not in local_flags and local_flags == ["-e", "PGCONNECT_TIMEOUT"]
    assert dbtools.url_env(url, prefix="T_")["T_PGHOST"] == "db.example.com"


def _b(name: str, usable: bool | None = None, source: str = "local") -> dict:
    return {"manifest": {"name": name, "source": source},
            "verify": None if usable is None else {"usable": usable, "reason": ""}}


def test_retention_keeps_the_newest_the_protected_and_the_last_known_good_of_each_source():
    backups = [_b("1", True), _b("2", True, "postgresql://m/app"), _b("3", False), _b("4"), _b("5"), _b("6")]
    assert db.to_prune(backups, keep=2) == ["3", "4"]  # 1 and 2: each source's newest usable
    assert db.to_prune(backups, keep=2, protect=frozenset({"4"})) == ["3"]  # being restored
    assert db.to_prune(backups, keep=10) == []
    # a backup marked unusable protects nothing; one never verified neither
    assert db.to_prune([_b("1", False), _b("2"), _b("3")], keep=1) == ["1", "2"]


def test_backup_files_are_written_whole_or_not_at_all():
    assert 'mv "$1.dump.partial" "$1.dump"' in db.DUMP_SCRIPT
    # killed backups' leftovers are swept only when nothing has written them for 10 minutes
    assert "-mmin +10" in db.SWEEP_SCRIPT and "'*.partial'" in db.SWEEP_SCRIPT and "'*.new'" in db.SWEEP_SCRIPT


def test_rclone_credentials_are_masked_and_its_configuration_never_on_a_command_line():
    secret_lines = ["pass = hunter22", "key_pem = -----BEGIN OPENSSH PRIVATE KEY-----\\nabc", "secret_access_key = AKx9",
                    "session_token=tok123"]
    plain_lines = ["type = sftp", "host = backup.example.com", "user = deploy", "key_use_agent = false"]
    assert all(db.SECRET_OPTION.match(line) for line in secret_lines)
    assert not any(db.SECRET_OPTION.match(line) for line in plain_lines)
    assert "cat > /tmp/rclone.conf" in db.COPY_SCRIPT and "RCLONE_SFTP_KNOWN_HOSTS_FILE" in db.COPY_SCRIPT



def test_the_secret_files_are_the_password_each_colors_url_and_one_ca(tmp_path):
    from deploy import access, config
    from deploy.errors import ConfigError

    s = config.load("development", root=config.project_root(), environ={"POSTGRES_PASSWORD": "pw-of-the-db-1"})
    assert s.app.database.file == ("DATABASE_URL_FILE",)  # the default example reads its URL from a file
    files = access.secret_files(s, {"green": ""}, database=True)
    assert files == {"secrets-db": {"postgres_password": "pw-of-the-db-1"}, "secrets-tools": {"postgres_password": "pw-of-the-db-1"},
                     "secrets-green": {"database_url": s.local_database_url()}}
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")
    managed = f"postgresql://app:pw2@db.example.com/shop?sslrootcert={ca}"
    files = access.secret_files(s, {"blue": managed})
    assert set(files) == {"secrets-blue", "dbca"} and files["dbca"] == {"root.crt": ca.read_text()}
    # the app gets the CA's path in its own container, and verify-full
    assert files["secrets-blue"]["database_url"] == keys.client_url(managed)
    assert "sslrootcert=/run/colorgate-db/root.crt" in files["secrets-blue"]["database_url"]
    other = tmp_path / "other.pem"
    other.write_text("-----BEGIN CERTIFICATE-----\nY\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="different CA files"):
        access.secret_files(s, {"blue": managed, "green": managed.replace(str(ca), str(other))})
    # "" is the configured URL, with its CA: after db.move, a color started with DATABASE_URL set gets both
    moved = dataclasses.replace(s, database_url=managed)
    files = access.secret_files(moved, {"blue": "", "green": ""})
    assert files["dbca"] == {"root.crt": ca.read_text()} and files["secrets-green"]["database_url"] == keys.client_url(managed)
