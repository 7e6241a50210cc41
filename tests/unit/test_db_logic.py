"""Backup facts and the verify table, on captured psql output, and the order of the
app's migrations with every failure path, from a case file (no Docker)."""

import dataclasses
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from deploy import bases, profiles, urls
from deploy.data import content, db, dbtools, migrations, offsite
from deploy.errors import ConfigError
from deploy.target import dbfacts

from .recording import check_case


def test_facts_parsing():
    facts = content.parse_facts(
        ["public.notes|12", "public.schema_migrations|2", "migrations|1,2", "noise"]
    )
    assert facts == content.Facts({"public.notes": 12, "public.schema_migrations": 2}, [1, 2])
    assert content.parse_facts(["migrations|"]).migrations == []


def test_compare_flags_each_difference():
    rows = content.compare(
        content.Facts({"a": 1, "b": 2}, [1, 2]), content.Facts({"a": 1, "c": 5}, [1])
    )
    assert rows == [
        ("rows a", "1", "1", True),
        ("rows b", "2", "-", False),
        ("rows c", "-", "5", False),
        ("migrations", "1,2", "1", False),
    ]
    assert "FAIL" in content.format_compare(rows)


def test_backup_names_sort_by_time():
    a = db.backup_name(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    b = db.backup_name(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC))
    assert a == "20260102T030405000006Z" and a < b


def test_dump_runs_inside_the_network_from_the_exported_snapshot():
    from deploy import config, profiles

    s = profiles.load(
        "development", root=config.project_root(), environ={"COLORGATE_PROJECT": "shop"}
    )
    cmd = dbtools.tools_cmd(
        s, "sh", "-c", db.DUMP_SCRIPT, "dump", "N", "SNAP", flags=dbtools.tools_env(s, major=15)[1]
    )
    assert cmd[cmd.index("run") : cmd.index("run") + 4] == ["run", "--rm", "--no-deps", "-T"]
    assert cmd[cmd.index("dbtools") + 1 :] == ["sh", "-c", db.DUMP_SCRIPT, "dump", "N", "SNAP"]
    assert '--snapshot="$2"' in db.DUMP_SCRIPT and "--format=custom" in db.DUMP_SCRIPT
    assert dbfacts.psql_cmd("shop-postgres-1", s)[:4] == ["docker", "exec", "-i", "shop-postgres-1"]


def test_a_managed_database_is_reached_through_the_environment_never_argv():
    from deploy import access, config

    url = "postgresql://app:s%40cret@db.example.com:6543/shop?sslmode=require"
    s = profiles.load("development", root=config.project_root(), environ={"DATABASE_URL": url})
    env, flags = dbtools.tools_env(s, major=17)
    assert env["CG_DBTOOLS_TAG"] == "pg17" and env["CG_DBTOOLS_BASE"].startswith(
        "colorgate-base/postgres17:trixie-"
    )
    assert {k: env[k] for k in dbtools.PG_VARS} == {
        "PGHOST": "db.example.com",
        "PGPORT": "6543",
        "PGUSER": "app",
        "PGPASSWORD": "s@cret",
        "PGDATABASE": "shop",
        "PGSSLMODE": "require",
    }
    cmd = dbtools.tools_cmd(s, "psql", flags=flags)
    assert not any("s@cret" in part or "s%40cret" in part for part in cmd)
    # not even in the container's environment: a file of its own volume, which the entrypoint reads
    assert "PGPASSWORD" not in cmd and cmd[cmd.index("CG_PGPASSWORD_FILE") - 1] == "-e"
    assert env["CG_PGPASSWORD_FILE"] == "/run/colorgate-secrets/pgpassword"
    assert (
        access.secret_files(s, {}, database=True, tools={"pgpassword": "s@cret"})["secrets-tools"][
            "pgpassword"
        ]
        == "s@cret"
    )
    # the stack's own database: the dbtools service's environment is used as it is
    local_env, local_flags = dbtools.tools_env(
        profiles.load("development", root=config.project_root(), environ={}), major=15
    )
    assert local_env["CG_DBTOOLS_TAG"] == "latest"
    assert "PGHOST" not in local_flags and local_flags == ["-e", "PGCONNECT_TIMEOUT"]
    assert dbtools.url_env(url, prefix="T_")["T_PGHOST"] == "db.example.com"


def _b(name: str, usable: bool | None = None, source: str = "local") -> dict:
    return {
        "manifest": {"name": name, "source": source},
        "verify": None if usable is None else {"usable": usable, "reason": ""},
    }


def test_retention_keeps_the_newest_the_protected_and_the_last_known_good_of_each_source():
    backups = [
        _b("1", True),
        _b("2", True, "postgresql://m/app"),
        _b("3", False),
        _b("4"),
        _b("5"),
        _b("6"),
    ]
    assert db.to_prune(backups, keep=2) == ["3", "4"]  # 1 and 2: each source's newest usable
    assert db.to_prune(backups, keep=2, protect=frozenset({"4"})) == ["3"]  # being restored
    assert db.to_prune(backups, keep=10) == []
    # a backup marked unusable protects nothing; one never verified neither
    assert db.to_prune([_b("1", False), _b("2"), _b("3")], keep=1) == ["1", "2"]
    # whatever reaches it, retention never deletes the backup just made
    assert (
        db.to_prune([_b("1"), _b("2"), _b("3")], keep=0)
        == db.to_prune([_b("1"), _b("2"), _b("3")], keep=-1)
        == ["1", "2"]
    )


def test_backup_files_are_written_whole_or_not_at_all():
    assert 'mv "$1.dump.partial" "$1.dump"' in db.DUMP_SCRIPT
    # killed backups' leftovers are swept only when nothing has written them for 10 minutes
    assert (
        "-mmin +10" in db.SWEEP_SCRIPT
        and "'*.partial'" in db.SWEEP_SCRIPT
        and "'*.new'" in db.SWEEP_SCRIPT
    )


def test_rclone_credentials_are_masked_and_its_configuration_never_on_a_command_line():
    secret_lines = [
        "pass = hunter22",
        "key_pem = -----BEGIN OPENSSH PRIVATE KEY-----\\nabc",
        "secret_access_key = AKx9",
        "session_token=tok123",
    ]
    plain_lines = [
        "type = sftp",
        "host = backup.example.com",
        "user = deploy",
        "key_use_agent = false",
    ]
    assert all(offsite.SECRET_OPTION.match(line) for line in secret_lines)
    assert not any(offsite.SECRET_OPTION.match(line) for line in plain_lines)
    assert (
        "cat > /tmp/rclone.conf" in offsite.COPY_SCRIPT
        and "RCLONE_SFTP_KNOWN_HOSTS_FILE" in offsite.COPY_SCRIPT
    )


def test_an_sftp_remote_without_a_pinned_host_key_is_known_before_anything_is_sent():
    config = "[offsite]\ntype = sftp\nhost = b.example\n\n[pinned]\ntype = sftp\nknown_hosts_file = /k\n\n[s3]\ntype = s3\n"
    assert offsite.unpinned_sftp(config, "offsite:backups")
    assert not offsite.unpinned_sftp(config, "pinned:backups")  # its own known_hosts_file
    assert not offsite.unpinned_sftp(config, "s3:bucket/backups") and not offsite.unpinned_sftp(
        config, "missing:x"
    )
    # rclone says what is wrong with it
    assert not offsite.unpinned_sftp("not [an ini", "offsite:x")
    wrapped = (
        config
        + "\n[sealed]\ntype = crypt\nremote = offsite:colorgate\npassword = x\n\n[sealed-pinned]\ntype = crypt\nremote = pinned:c\n"
    )
    # through crypt
    assert offsite.unpinned_sftp(wrapped, "sealed:") and not offsite.unpinned_sftp(
        wrapped, "sealed-pinned:"
    )


def test_the_secret_files_are_the_password_each_colors_url_and_one_ca(tmp_path):
    from deploy import access, config
    from deploy.errors import ConfigError

    s = profiles.load(
        "development", root=config.project_root(), environ={"POSTGRES_PASSWORD": "pw-of-the-db-1"}
    )
    # the default example reads its URL from a file
    assert s.app.database.file == ("DATABASE_URL_FILE",)
    files = access.secret_files(s, {"green": ""}, database=True)
    assert files == {
        "secrets-db": {"postgres_password": "pw-of-the-db-1"},
        "secrets-tools": {"postgres_password": "pw-of-the-db-1"},
        "secrets-green": {"database_url": s.local_database_url()},
    }
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")
    managed = f"postgresql://app:pw2@db.example.com/shop?sslrootcert={ca}"
    files = access.secret_files(s, {"blue": managed})
    assert set(files) == {"secrets-blue", "dbca"} and files["dbca"] == {"root.crt": ca.read_text()}
    # the app gets the CA's path in its own container, and verify-full
    assert files["secrets-blue"]["database_url"] == urls.client_url(managed)
    assert "sslrootcert=/run/colorgate-db/root.crt" in files["secrets-blue"]["database_url"]
    other = tmp_path / "other.pem"
    other.write_text("-----BEGIN CERTIFICATE-----\nY\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="different CA files"):
        access.secret_files(s, {"blue": managed, "green": managed.replace(str(ca), str(other))})
    # "" is the configured URL, with its CA: after db.move, a color started with DATABASE_URL set gets both
    moved = dataclasses.replace(s, database_url=managed)
    files = access.secret_files(moved, {"blue": "", "green": ""})
    assert files["dbca"] == {"root.crt": ca.read_text()} and files["secrets-green"][
        "database_url"
    ] == urls.client_url(managed)
    # a managed URL without a CA: the app checks it against the system CAs this machine trusts, as Colorgate does
    bare = "postgresql://app:pw2@db.example.com/shop"
    files = access.secret_files(s, {"blue": bare})
    assert (
        files["dbca"] == {"root.crt": Path(urls.ca_file(bare)).read_text()}
        and "BEGIN CERTIFICATE" in files["dbca"]["root.crt"]
    )
    assert files["secrets-blue"]["database_url"].endswith(
        "?sslrootcert=/run/colorgate-db/root.crt&sslmode=verify-full"
    )


@pytest.mark.parametrize(
    "server, tools", [(12, 13), (13, 13), (14, 15), (15, 15), (16, 17), (17, 17)]
)
def test_the_tools_are_of_the_servers_major_or_the_next_debian_packages(server, tools):
    """pg_dump reads servers of its own major or older, never a newer one."""
    assert bases.tools_major(server) == tools
    base = bases.postgres_base(tools)
    assert base.packages[0] == f"postgresql-{tools}" and base.suite == bases.POSTGRES_SUITES[tools]
    assert bases.tools_tag(tools) == ("latest" if tools == 15 else f"pg{tools}")


def test_a_server_newer_than_any_debian_tools_is_refused_in_one_line():

    with pytest.raises(
        ConfigError,
        match=r"^the database runs PostgreSQL 18, newer than the newest tools Debian packages \(17\): run PostgreSQL 17 or older$",
    ):
        bases.tools_major(18)


FAKE_PG_RESTORE = """#!/bin/sh
[ "$1" = --version ] && { echo "pg_restore (PostgreSQL) 17.6 (Debian 17.6-0+deb13u1)"; exit 0; }
[ "$1" = -l ] && { printf '215; 1259 16385 TABLE public kept app\\n3300; 2620 16390 TRIGGER public kept colorgate_freeze app\\n'
                   printf '8; 2615 16384 SCHEMA - colorgate_freeze app\\n'; exit 0; }
case " $* " in
  *" -f - "*) printf 'SET statement_timeout = 0;\\nSET transaction_timeout = 0;\\nBEGIN;\\nCREATE TABLE kept (id int);\\n'
              [ "${FAKE_FAIL:-}" = 1 ] && exit 1
              printf 'COMMIT;\\n' ;;
  *) echo "direct $*" > "$LOG" ;;
esac
"""
FAKE_PSQL = """#!/bin/sh
case " $* " in
  *" SHOW server_version_num "*) echo "$FAKE_SERVER" ;;
  *) { echo "psql $*"; cat; } > "$LOG" ;;
esac
"""


def _restore(tmp_path, server: int, fail: bool = False) -> tuple[subprocess.CompletedProcess, str]:
    for name, text in (("pg_restore", FAKE_PG_RESTORE), ("psql", FAKE_PSQL)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    log = tmp_path / "log"
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "LOG": str(log),
        "FAKE_SERVER": str(server),
        "TMPDIR": str(tmp_path),
        "FAKE_FAIL": "1" if fail else "",
    }
    proc = subprocess.run(
        [
            "sh",
            "-c",
            dbtools.RESTORE_SCRIPT,
            "restore",
            "/backups/b.dump",
            "app",
            "--clean",
            "--no-owner",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc, log.read_text() if log.exists() else ""


def test_a_restore_into_a_server_as_new_as_the_tools_is_pg_restore_itself_in_one_transaction(
    tmp_path,
):
    proc, log = _restore(tmp_path, 170002)
    toc = tmp_path / "pg_restore.toc"
    assert (
        proc.returncode == 0
        and log
        == f"direct --single-transaction --exit-on-error -L {toc} -d app --clean --no-owner /backups/b.dump\n"
    )
    # a backup taken during a freeze brings none of the freeze's refusal of writes along
    assert toc.read_text() == "215; 1259 16385 TABLE public kept app\n"


def test_into_an_older_server_the_setting_it_lacks_is_left_out_and_a_half_read_archive_fails(
    tmp_path,
):
    """16 restored with 17's tools: pg_restore's own connection would send
    `SET transaction_timeout`, which 16 refuses."""
    proc, log = _restore(tmp_path, 160010)
    assert proc.returncode == 0, proc.stderr
    assert log.splitlines() == [
        "psql -X -q -v ON_ERROR_STOP=1 -d app",
        "SET statement_timeout = 0;",
        "BEGIN;",
        "CREATE TABLE kept (id int);",
        "COMMIT;",
    ]
    # an archive read half-way: psql saw no COMMIT (nothing committed), and the restore fails
    proc, log = _restore(tmp_path, 160010, fail=True)
    assert proc.returncode == 1 and "COMMIT;" not in log
    assert proc.stderr.strip() == "pg_restore: error: the archive could not be read to its end"


def test_the_servers_version_is_not_asked_of_an_app_without_a_database():
    from deploy import config
    from deploy.errors import BadInput

    s = profiles.load(
        "development", root=config.project_root(), environ={"COLORGATE_APP": "examples/static-site"}
    )
    with pytest.raises(
        BadInput,
        match=r"declares no database \(x-colorgate.database\): there is nothing for db.\* to do$",
    ):
        dbtools.dump_major(s)


MIGRATE_RUNS = yaml.safe_load((Path(__file__).with_name("cases") / "migrate_runs.yaml").read_text())


@pytest.mark.parametrize("case", MIGRATE_RUNS, ids=[c["name"] for c in MIGRATE_RUNS])
def test_migrate_runs(case):
    # the migrations are a phase of the operation around them: its record says "migrations"
    check_case(
        case, migrations.plan(**case["plan"]), migrations.UNDO, "migrated", "migrate", phases=False
    )
