"""Backups, verify and restore against the stack's real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading

import pytest
import yaml

from benchmarks.db_move import docker0
from benchmarks.remote_and_idle import keygen, ssh_host
from deploy import access, contract, edge, errors, profiles, stack
from deploy.data import db, dbtools, verify
from deploy.edge import locking, tls
from deploy.release import gates
from deploy.target import dbfacts, facts, runner

from .conftest import invoke, isolated_env, paused_at, running_stack


@pytest.fixture(scope="module")
def env():
    return isolated_env("db")


@pytest.fixture(scope="module")
def settings(request, env):
    s = profiles.load("development", environ={**os.environ, **env})
    with running_stack(request, s):
        yield s


@pytest.fixture
def client(settings):
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        yield c


def test_backup_under_writes_then_verify_passes(settings, client):
    for i in range(20):
        client.post("/api/notes", json={"body": f"before {i}"})
    stop = threading.Event()

    def writer():
        with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
            while not stop.is_set():
                c.post("/api/notes", json={"body": "during"})

    t = threading.Thread(target=writer)
    t.start()
    try:
        manifest = db.backup(settings)
    finally:
        stop.set()
        t.join()
    assert (
        manifest["counts"]["public.notes"] >= 20
        and manifest["counts"]["public.schema_migrations"] == 2
    )
    result = verify.verify(settings, manifest["name"])
    assert result.usable, result
    # the stack's own PostgreSQL is 15, dumped and restored with 15's tools (the default image)
    assert manifest["postgres"] // 10000 == 15 and result.reason.startswith(
        "restored into PostgreSQL 15;"
    )
    assert (
        "rows public.notes",
        str(manifest["counts"]["public.notes"]),
        str(manifest["counts"]["public.notes"]),
        True,
    ) in result.rows
    listed = {b["manifest"]["name"]: b for b in db.list_backups(settings)}
    assert (
        listed[manifest["name"]]["verify"]["usable"] is True
        and listed[manifest["name"]]["size"] == manifest["size"]
    )


def test_a_corrupted_dump_fails_verify_and_is_marked_unusable(settings, env):
    name = db.backup(settings)["name"]
    dbtools.tools(
        settings,
        'printf "garbage" | dd of="/backups/$1.dump" bs=1 seek=200 conv=notrunc 2>/dev/null',
        name,
    )
    proc = invoke("db.verify", name, env=env)
    assert (
        proc.returncode == errors.FAILED
        and "UNUSABLE" in proc.stdout
        and "checksum does not match" in proc.stdout
    )
    assert (
        f"{name}" in invoke("db.backups", env=env).stdout
        and "UNUSABLE" in invoke("db.backups", env=env).stdout
    )
    refused = invoke("db.restore", name, env=env)
    assert refused.returncode == errors.BAD_INPUT and "is marked unusable" in refused.stderr


def test_a_truncated_dump_fails_the_restore_check(settings):
    m = db.backup(settings)
    # truncated as a full disk would leave it, with a manifest that matches the truncated file
    dbtools.tools(
        settings,
        'head -c 1500 "/backups/$1.dump" > /tmp/t && cat /tmp/t > "/backups/$1.dump"',
        m["name"],
    )
    m["sha256"] = dbtools.tools(
        settings, 'sha256sum "/backups/$1.dump" | cut -d" " -f1', m["name"]
    ).stdout.strip()
    dbtools.tools(settings, 'cat > "/backups/$1.manifest.json"', m["name"], input=json.dumps(m))
    result = verify.verify(settings, m["name"])
    assert not result.usable and result.reason.startswith("pg_restore failed")


def test_restore_brings_back_deleted_rows_after_a_fresh_backup(settings, client, env):
    kept = client.post("/api/notes", json={"body": "keep me"}).json()
    name = db.backup(settings)["name"]
    assert client.delete(f"/api/notes/{kept['id']}").status_code == 204
    later = client.post("/api/notes", json={"body": "written after the backup"}).json()
    refused = invoke("db.restore", name, env=env)  # never verified: not without saying so
    assert refused.returncode == errors.BAD_INPUT and refused.stderr.strip().endswith(
        f"backup {name} was never verified: run `invoke db.verify {name}` first, or restore it as it is with --unverified"
    )
    assert verify.verify(settings, name).usable
    with paused_at(
        "backup", "db.restore", name, env=env
    ) as running:  # writes are frozen before the fresh backup starts
        assert edge.is_frozen(settings)
        running.send_signal(signal.SIGUSR1)
    proc = running.result
    assert proc.returncode == 0, proc.stderr
    assert (
        "taking a fresh backup first (writes frozen at the edge)" in proc.stderr
        and not edge.is_frozen(settings)
    )
    record = edge.read_history(settings)[-1]
    assert (record["action"], record["outcome"]) == ("db.restore", "restored") and name in record[
        "detail"
    ]
    assert client.get(f"/api/notes/{kept['id']}").json()["body"] == "keep me"
    assert client.get(f"/api/notes/{later['id']}").status_code == 404
    fresh = proc.stdout.strip().split("backup ")[-1]
    assert fresh in [
        b["manifest"]["name"] for b in db.list_backups(settings)
    ]  # the state before the restore is kept
    assert client.get("/api/health").json()["database"] == "ok"
    # restored as the app's own role: the app owns what came back and writes to it
    assert client.post("/api/notes", json={"body": "after the restore"}).status_code < 300


def test_the_app_owns_its_database_as_a_role_of_its_own_and_takes_over_what_the_superuser_made(
    settings, client
):
    pg = dbfacts.psql_cmd(facts.container(settings, "postgres"), settings)

    def sql(text: str) -> str:
        return runner.run(pg, input=text, env=settings.docker_env()).stdout.strip()

    assert client.get("/api/health").json()["database"] == "ok"
    roles = dbfacts.database_roles(settings)
    assert roles.role_super is False and roles.database_owner == settings.app_db_user
    app_sessions = {(user, sup) for _, user, sup in roles.sessions}
    assert (settings.app_db_user, False) in app_sessions and not any(
        sup for _, sup in app_sessions
    ), app_sessions
    # a database where the app ran as the superuser (before this version): what it made is handed over
    sql("""CREATE SCHEMA legacy; CREATE TABLE legacy.t (id serial PRIMARY KEY, v text);
CREATE TABLE public.ident (id int GENERATED ALWAYS AS IDENTITY, v text); CREATE VIEW legacy.v AS SELECT * FROM legacy.t;
CREATE TYPE legacy.mood AS ENUM ('ok'); CREATE FUNCTION legacy.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE SEQUENCE public.free_seq;""")
    try:
        access._staged.discard(("role", settings.docker_host, settings.project))
        access.prepare_clients(settings, "blue", settings.local_database_url())
        owners = sql("""SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname IN ('legacy', 'public') AND c.relkind IN ('r', 'v', 'S')
UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'legacy'
UNION SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'mood'
UNION SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'f';""")
        assert owners.split() == [settings.app_db_user]
        # the app's role uses all of it (the serial's and identity's sequences came along)
        assert (
            sql(f"""SET ROLE "{settings.app_db_user}"; INSERT INTO legacy.t (v) VALUES ('x'); INSERT INTO public.ident (v) VALUES ('y');
SELECT legacy.f() + nextval('public.free_seq') + (SELECT count(*) FROM legacy.v);""")
            == "3"
        )
        access._staged.discard(("role", settings.docker_host, settings.project))
        access.prepare_clients(settings, "blue", settings.local_database_url())  # idempotent
    finally:
        sql("DROP SCHEMA legacy CASCADE; DROP TABLE public.ident; DROP SEQUENCE public.free_seq;")


def test_restore_rechecks_the_checksum_and_restores_even_the_oldest_kept(settings, client, env):
    oldest = db.backup(settings, keep=2)["name"]
    assert verify.verify(settings, oldest).usable
    db.backup(settings, keep=2)
    # the fresh backup a restore takes first would have pruned the oldest of two: it is kept
    proc = invoke("db.restore", oldest, env={**env, "COLORGATE_BACKUP_KEEP": "2"})
    assert proc.returncode == 0, proc.stderr
    assert oldest in [b["manifest"]["name"] for b in db.list_backups(settings)]
    # a dump changed since it was verified is refused before anything happens
    dbtools.tools(settings, 'printf "x" >> "/backups/$1.dump"', oldest)
    before = len(edge.read_history(settings))
    refused = invoke("db.restore", oldest, env=env)
    assert (
        refused.returncode == errors.FAILED
        and "changed or was damaged since it was made" in refused.stderr
    )
    assert len(edge.read_history(settings)) == before


def test_unknown_backup_and_retention(settings, env):
    verified = [
        b["manifest"]["name"]
        for b in db.list_backups(settings)
        if (b.get("verify") or {}).get("usable")
    ]
    for _ in range(3):
        db.backup(settings, keep=2)
    names = [b["manifest"]["name"] for b in db.list_backups(settings)]
    # the newest two, and the newest a restore verified usable (retention never drops the last known good one)
    assert len(names) == 3 and verified and verified[-1] in names
    proc = invoke("db.verify", "20000101T000000000000Z", env=env)
    assert proc.returncode == errors.BAD_INPUT
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "colorgate: unknown backup '20000101T000000000000Z': `invoke db.backups` lists them"
        )
    )


def test_what_killed_backups_left_is_swept(settings):
    # the last: a backup in progress
    dbtools.tools(
        settings,
        'cd /backups && touch -d "20 minutes ago" a.dump.partial b.dump c.manifest.json.new '
        "&& touch new.dump.partial",
    )
    db.backup(settings)
    left = dbtools.tools(settings, "ls /backups").stdout.split()
    assert (
        not {"a.dump.partial", "b.dump", "c.manifest.json.new"} & set(left)
        and "new.dump.partial" in left
    )
    dbtools.tools(settings, "rm -f /backups/new.dump.partial")


def test_up_migrates_only_under_the_lock_after_a_verified_backup(settings, env):
    up = invoke("up", env=env)  # at head: nothing taken, nothing recorded
    assert up.returncode == 0 and "backing up" not in up.stderr
    runner.run(
        dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings),
        input="ALTER TABLE notes DROP COLUMN tags; DELETE FROM schema_migrations WHERE version = 2;",
    )
    with locking.lock(settings, "deploy"):
        busy = invoke("up", env=env)
    assert busy.returncode == errors.LOCKED and "locked by deploy by " in busy.stderr
    up = invoke("up", env=env)
    assert up.returncode == 0, up.stderr
    record = edge.read_history(settings)[-1]
    assert (record["action"], record["outcome"]) == ("migrate", "migrated") and {
        "backup",
        "verify",
    } <= set(record["timings"])
    assert verify.verify(settings, record["detail"].split()[-1]).usable


def test_cheap_migrations_keep_a_verified_backup_only_when_they_changed_the_schema(
    settings, env, tmp_path
):
    """migrations.cheap, without a status command: every `up` runs the command, and its
    backup is verified and kept only when the schema changed (read before and after)."""
    shutil.copytree(settings.app_dir.parent, tmp_path / "examples")
    path = tmp_path / "examples" / settings.app_dir.name / "docker-compose.yml"
    data = contract.read_compose(path)
    data["x-colorgate"]["migrations"] = {**data["x-colorgate"]["migrations"], "cheap": True}
    del data["x-colorgate"]["migrations"]["status"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cheap = {**env, "COLORGATE_APP": str(path.parent)}
    kept = len(db.list_backups(settings))
    # at head: the command changes nothing, its backup is dropped unverified
    up = invoke("up", env=cheap)
    assert up.returncode == 0, up.stderr
    record = edge.read_history(settings)[-1]
    assert (
        record["outcome"] == "migrated"
        and "changed no table (migrations.cheap)" in record["detail"]
    )
    assert "verify" not in record["timings"] and len(db.list_backups(settings)) == kept
    runner.run(
        dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings),
        input="ALTER TABLE notes DROP COLUMN tags; DELETE FROM schema_migrations WHERE version = 2;",
    )
    # the command changes the schema now: the backup from before it is verified and kept
    up = invoke("up", env=cheap)
    assert up.returncode == 0, up.stderr
    record = edge.read_history(settings)[-1]
    assert "verify" in record["timings"] and len(db.list_backups(settings)) == kept + 1
    assert verify.verify(settings, record["detail"].split()[-1]).usable


def test_backups_are_copied_off_the_host_checked_there_and_fetched_back(settings, env, tmp_path):
    """A real SFTP server (Debian's openssh, on docker0 as a remote host would be), reached by rclone
    from the database's host, its host key pinned."""
    key = tmp_path / "id_ed25519"
    with ssh_host(keygen(key), with_docker=False, listen=docker0()) as sftp:
        host_keys = runner.run(
            ["docker", "exec", sftp.container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"]
        ).stdout.splitlines()
        known = tmp_path / "known_hosts"
        known.write_text(
            "".join(f"[{docker0()}]:{sftp.port} {' '.join(k.split()[:2])}\n" for k in host_keys)
        )
        pem = key.read_text().strip().replace("\n", "\\n")
        rclone = tmp_path / "rclone.conf"
        rclone.write_text(
            f"[offsite]\ntype = sftp\nhost = {docker0()}\nport = {sftp.port}\nuser = deploy\nkey_pem = {pem}\n"
        )
        copying = {
            **env,
            "COLORGATE_BACKUP_COPY": "offsite:backups",
            "COLORGATE_BACKUP_COPY_CONFIG": str(rclone),
            "COLORGATE_BACKUP_COPY_KNOWN_HOSTS": str(known),
        }
        made = invoke("db.backup", "--copy", env=copying)
        assert made.returncode == 0, made.stderr
        name = made.stdout.split()[1].rstrip(":")
        assert (
            f"copying backup {name} to offsite:backups" in made.stderr
            and "PRIVATE KEY" not in made.stdout + made.stderr
        )
        there = runner.run(
            ["docker", "exec", sftp.container, "ls", "/home/deploy/backups"]
        ).stdout.split()
        assert {f"{name}.dump", f"{name}.manifest.json"} <= set(there)
        listed = invoke("db.backups", env=copying).stdout
        assert any(line.startswith(name) and " copied " in line for line in listed.splitlines()), (
            listed
        )
        # the target loses its copy: the remote one is listed, and verify fetches and checks it
        dbtools.tools(settings, 'rm -f /backups/"$1".*', name)
        assert any(
            line.startswith(name) and "only there" in line
            for line in invoke("db.backups", env=copying).stdout.splitlines()
        )
        verified = invoke("db.verify", name, env=copying)
        assert verified.returncode == 0 and f"backup {name}: usable" in verified.stdout, (
            verified.stderr
        )
        # a host key that does not match: refused, in one line, the backup kept on the target
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
            check=True,
        )
        known.write_text(
            "".join(
                f"[{docker0()}]:{sftp.port} {line.split()[0]} {(tmp_path / 'other.pub').read_text().split()[1]}\n"
                for line in host_keys
                if line.startswith("ssh-ed25519")
            )
        )
        refused = invoke("db.backup", env=copying)
        line = refused.stderr.strip().splitlines()[-1]
        assert (
            refused.returncode == errors.FAILED
            and "is made and kept on the target, but the off-host copy (send) to offsite:backups failed"
            in line
        )
        assert "PRIVATE KEY" not in refused.stderr
        # no host key pinned at all: refused before rclone connects (it would accept any)
        unpinned = invoke(
            "db.backup", "--copy", env={**copying, "COLORGATE_BACKUP_COPY_KNOWN_HOSTS": ""}
        )
        assert (
            unpinned.returncode != 0
            and "is SFTP, and no host key is pinned" in unpinned.stderr.strip().splitlines()[-1]
        )
    assert (
        invoke("db.backup", "--copy", env=env)
        .stderr.strip()
        .endswith("COLORGATE_BACKUP_COPY_CONFIG (its rclone configuration file)")
    )


def test_migrate_when_at_head_changes_nothing(settings, env):
    before = len(db.list_backups(settings))
    proc = invoke("db.migrate", env=env)
    assert (
        proc.returncode == 0
        and proc.stdout.strip() == "at head"
        and "nothing to migrate" in proc.stderr
    )
    assert len(db.list_backups(settings)) == before  # no backup taken for nothing


def test_down_with_volumes_removes_the_backups_too(settings):
    assert db.list_backups(settings)  # there is something to remove
    stack.down(settings, volumes=True)
    left = runner.run(
        [
            "docker",
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={settings.project}",
        ]
    ).stdout
    assert left.split() == []
