"""db.move against a second, real PostgreSQL standing in for the managed service,
reached only by URL (published on the docker0 address, as a managed database is
reached over the network), while a client keeps writing through the public edge."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from benchmarks.db_move import (
    Managed,
    Writer,
    certificate_authority,
    docker0,
    free_port_on,
    isolated,
    managed_image,
    managed_postgres,
    relay_certificate,
)
from deploy import bases, edge, errors, profiles, render, urls
from deploy.data import db, dbtools, relay, replication, verify
from deploy.edge import locking
from deploy.release import gates
from deploy.target import dbfacts, facts, runner

from .conftest import invoke, isolated_env, paused_at, running_stack

PG13 = bases.postgres_base(13)


def move_env(tag: str) -> dict[str, str]:
    return {
        **isolated_env(tag),
        **{k: v for k, v in isolated("x").items() if k.startswith("COLORGATE_MOVE_")},
    }


@pytest.fixture(scope="module")
def env():
    return move_env("mv")


@pytest.fixture(scope="module")
def settings(request, env):
    s = profiles.load("development", environ={**os.environ, **env})
    with running_stack(request, s):
        yield s


@pytest.fixture(scope="module")
def pg17(settings):
    """A target as managed services run one: 16 or newer, trusting public CAs."""
    return managed_image(settings)


def cli_env(env: dict[str, str], url: str | None = None, **extra: str) -> dict[str, str]:
    return {**env, **({"COLORGATE_MOVE_TO": url} if url else {}), **extra}


def test_a_write_freeze_refuses_writes_and_serves_reads(settings, env):
    edge.set_frozen(settings, True)
    try:
        with gates.edge_client(settings) as client:
            assert client.get("/api/notes").status_code == 200
            r = client.post("/api/notes", json={"body": "frozen"})
            assert (
                r.status_code == 503
                and r.headers["retry-after"] == "5"
                and "writes are paused" in r.json()["error"]
            )
        assert "writes: FROZEN at the edge" in invoke("status", env=env).stdout
        with locking.lock(settings, "db.move"):  # a move that runs keeps its freeze
            held = invoke("db.unfreeze", env=env)
        assert held.returncode == errors.LOCKED and edge.is_frozen(settings)
    finally:
        proc = invoke("db.unfreeze", env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "writes open again"
    with gates.edge_client(
        settings
    ) as client:  # at once: unfreeze returns when new connections see it
        assert (
            client.post(
                "/api/notes", json={"body": "thawed"}, headers={"Connection": "close"}
            ).status_code
            == 201
        )
    assert invoke("db.unfreeze", env=env).stdout.strip() == "writes were not frozen"


def test_through_the_relay_only_the_move_role_gets_in_and_only_over_tls(settings, env):
    """The relay is published on the host while a replicate move runs: until the
    database's rules for it are written it forwards nothing; then a superuser, or the
    move role without TLS, coming through it is refused by the database, and it forwards
    a few connections at once at most."""
    password = "relay-test-pass-9"
    dbtools.psql(settings, f"CREATE ROLE {relay.ROLE} LOGIN REPLICATION PASSWORD '{password}';")

    def through(
        user: str,
        secret: str,
        sslmode: str,
        command: str = 'psql -X -A -t -c "SELECT current_user"',
    ):
        return dbtools.tools(
            settings,
            command,
            check=False,
            extra={
                "PGHOST": settings.move_relay_host,
                "PGPORT": str(settings.move_relay_port),
                "PGUSER": user,
                "PGPASSWORD": secret,
                "PGSSLMODE": sslmode,
                "PGDATABASE": settings.postgres_db,
                "PGCONNECT_TIMEOUT": "3",
            },
        )

    try:
        relay.launch(settings)  # published, not yet open
        closed = through(settings.postgres_user, settings.postgres_password, "disable")
        assert (
            closed.returncode != 0
            and "pg_hba" not in closed.stderr
            and any(
                why in closed.stderr
                for why in ("closed the connection", "refused", "timeout expired")
            )
        ), closed.stderr
        relay.admit(settings)
        superuser = through(settings.postgres_user, settings.postgres_password, "require")
        assert superuser.returncode != 0 and "pg_hba.conf rejects connection" in superuser.stderr, (
            superuser.stderr
        )
        plain = through(relay.ROLE, password, "disable")
        assert plain.returncode != 0 and "pg_hba.conf rejects connection" in plain.stderr, (
            plain.stderr
        )
        tls = through(relay.ROLE, password, "require")
        assert tls.returncode == 0 and tls.stdout.strip() == relay.ROLE, tls.stderr
        # the app's own way in is as it was
        assert dbtools.psql(settings, "SELECT 1;").returncode == 0

        many = render.RELAY_CONNECTIONS + 3
        sessions = threading.Thread(
            target=through,
            args=(
                relay.ROLE,
                password,
                "require",
                " ".join(['psql -X -A -t -c "SELECT pg_sleep(4)" > /dev/null &'] * many) + " wait",
            ),
        )
        sessions.start()
        count = dbfacts.psql_cmd(facts.container(settings, "postgres"), settings)
        seen = []
        while sessions.is_alive():
            seen.append(
                int(
                    runner.run(
                        count,
                        input=f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{relay.ROLE}';",
                    ).stdout
                )
            )
            time.sleep(0.1)
        sessions.join()
        assert max(seen) == render.RELAY_CONNECTIONS, seen  # the rest waited their turn
    finally:
        relay.remove(settings)
        dbtools.psql(settings, replication.DROP_SQL)
    hba = runner.run(
        [
            "docker",
            "exec",
            f"{settings.project}-postgres-1",
            "sh",
            "-c",
            'cat "$PGDATA/pg_hba.conf"',
        ]
    ).stdout
    assert relay.HBA[0] not in hba and "dbrelay" not in facts.service_states(settings)


def test_bad_targets_are_refused_before_anything_changes(settings, env, pg17, tmp_path):
    before = (edge.read_active(settings), len(edge.read_history(settings)))
    address = docker0()
    cases = [
        (f"postgresql://admin:pw@{address}:{free_port_on(address)}/app", "nothing answers there"),
        ("postgresql://admin:pw@no-such-host.invalid:5432/app", "its host name does not resolve"),
        ("postgresql://admin@db.example.com/app", "the target URL needs a user and a password"),
    ]
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as managed:
        wrong = managed.url.replace(managed.password, "wrong-password")
        cases.append((wrong, "refused the credentials"))
        cases.append(
            (
                managed.url.replace("/app?", "/nodb?"),
                "does not exist on the target: create it (empty) first",
            )
        )
        # verify-full by default: a certificate that the URL's CA (or, without one, the system's) did not sign is refused
        other_ca, _, _ = certificate_authority(tmp_path, "Someone else's CA")
        cases.append(
            (
                managed.url.split("?")[0] + f"?sslrootcert={other_ca}",
                "certificate that is not signed by the CA",
            )
        )
        cases.append((managed.url.split("?")[0], "certificate that is not signed by the CA"))
        managed.sql("CREATE TABLE leftovers (id int)")
        cases.append((managed.url, "is not empty (1 table(s), e.g. public.leftovers)"))
        for url, message in cases:
            proc = invoke("db.move", env=cli_env(env, url))
            last = proc.stderr.strip().splitlines()[-1]
            # the URL given, not the target it names
            malformed = message.startswith("the target URL")
            assert proc.returncode == (errors.BAD_INPUT if malformed else errors.FAILED), (
                proc.stderr
            )
            assert last.startswith("colorgate: ") and message in last, proc.stderr
            assert (
                "Traceback" not in proc.stderr and managed.password not in proc.stderr + proc.stdout
            )
    # replicate: the target must be able to check the relay's certificate, and it must be one it would accept
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as pg15:
        checks = [
            (
                pg15.url,
                {},
                "runs PostgreSQL 15, which cannot check the relay's certificate against its system CAs "
                "(sslrootcert=system needs 16 or newer): set COLORGATE_MOVE_RELAY_SSLMODE=require",
            )
        ]
        with managed_postgres(settings, pg17) as managed:
            checks += [
                (
                    managed.url,
                    {"COLORGATE_MOVE_RELAY_CERT": "", "COLORGATE_MOVE_RELAY_KEY": ""},
                    "the edge serves a certificate of its own local CA, which the target does not trust",
                ),
                (
                    managed.url,
                    {"COLORGATE_MOVE_RELAY_HOST": "127.0.0.1"},
                    f"is for {address}, not 127.0.0.1 (COLORGATE_MOVE_RELAY_HOST), so a client checking it would refuse it",
                ),
            ]
            for url, extra, message in checks:
                proc = invoke("db.move", "--mode", "replicate", env=cli_env(env, url, **extra))
                last = proc.stderr.strip().splitlines()[-1]
                assert (
                    proc.returncode == errors.FAILED
                    and last.startswith("colorgate: ")
                    and message in last
                ), proc.stderr
            # a local table without a primary key: replication would break the live app's UPDATE and DELETE on it
            local = dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings)
            runner.run(local, input="CREATE TABLE audit_log (at timestamptz, line text);")
            try:
                proc = invoke("db.move", "--mode", "replicate", env=cli_env(env, managed.url))
                assert (
                    proc.returncode == errors.FAILED
                    and "1 local table(s) have no replica identity (no primary key), e.g. public.audit_log"
                    in proc.stderr.strip().splitlines()[-1]
                ), proc.stderr
            finally:
                runner.run(local, input="DROP TABLE audit_log;")
    unknown = invoke("db.move", "--mode", "teleport", env=cli_env(env, cases[0][0]))
    assert (
        unknown.returncode == errors.BAD_INPUT
        and "unknown mode 'teleport': use dump or replicate" in unknown.stderr
    )
    assert (edge.read_active(settings), len(edge.read_history(settings))) == before
    assert not edge.is_frozen(settings) and "dbrelay" not in facts.service_states(settings)
    assert (
        invoke("db.retire-local", env=env)
        .stderr.strip()
        .endswith(
            "the stack's own PostgreSQL is the app's database: move it first with `invoke db.move --to URL`"
        )
    )


def test_a_target_older_than_the_source_is_refused(settings, env):
    bases.build_bases(settings, [PG13])
    tag = f"{settings.image_prefix}postgres13:test"
    runner.run(
        [
            "docker",
            "build",
            "--quiet",
            "--build-arg",
            f"BASE={PG13.tag(settings.base_source)}",
            "--tag",
            tag,
            str(settings.app_dir.parent / "postgres-debian"),
        ],
        env={"DOCKER_BUILDKIT": "0"},
    )
    with managed_postgres(settings, tag) as managed:
        assert managed.sql("SHOW server_version_num").startswith("13")
        proc = invoke("db.move", env=cli_env(env, managed.url))
    assert (
        proc.returncode == errors.FAILED
        and proc.stderr.strip()
        .splitlines()[-1]
        .startswith("colorgate: the target database postgresql://admin@")
        and "runs PostgreSQL 13, older than the local 15" in proc.stderr
    )


def assert_nothing_moved(settings, before, proc):
    """A move that failed after it started: one line, traffic and data where they were,
    writes open again, the candidate stopped, no relay left."""
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        proc.returncode == errors.FAILED
        and last.startswith("colorgate: ")
        and "Traceback" not in proc.stderr
    )
    assert (
        "traffic stays on blue with the local database, untouched" in last
        and "now holds a partial copy" in last
    )
    assert edge.read_active(settings) == before and not edge.is_frozen(settings)
    states = facts.service_states(settings)
    assert states["backend_green"].state == "exited" and "dbrelay" not in states
    assert edge.read_database_record(settings)["url"] == "local"
    assert edge.read_history(settings)[-1]["outcome"] == "failed"
    with gates.edge_client(
        settings
    ) as client:  # still serving, and writing, from the local database
        assert (
            client.post(
                "/api/notes", json={"body": "still-local"}, headers={"Connection": "close"}
            ).status_code
            == 201
        )
        assert "still-local" in [n["body"] for n in client.get("/api/notes").json()]
    return last


def test_a_move_that_fails_midway_leaves_traffic_and_data_where_they_were(
    settings, env, pg17, tmp_path
):
    before = edge.read_active(settings)
    with gates.edge_client(settings) as client:
        notes = client.get("/api/notes").json()
    with managed_postgres(settings, pg17) as managed:
        # a user that may connect but not create tables: the checks pass, the restore fails
        managed.sql("CREATE ROLE limited LOGIN PASSWORD 'limited-pass-1'")
        limited = managed.url.replace(f"admin:{managed.password}", "limited:limited-pass-1")
        proc = invoke("db.move", env=cli_env(env, limited))
        assert "permission denied for schema public" in assert_nothing_moved(settings, before, proc)
        # replicate: the target cannot reach the relay, so subscribing fails after the schema copy
        unreachable = cli_env(
            env,
            managed.url,
            COLORGATE_MOVE_RELAY_HOST="192.0.2.1",
            COLORGATE_MOVE_RELAY_SSLMODE="require",
        )
        proc = invoke("db.move", "--mode", "replicate", env=unreachable)
        assert "could not subscribe through 192.0.2.1" in assert_nothing_moved(
            settings, before, proc
        )
        # the target checks the server it reaches through the relay: a certificate from a CA it does not
        # trust is refused, and the local database serves its own certificate again
        untrusted = relay_certificate(
            docker0(), ca=certificate_authority(tmp_path, "Not a public CA")
        )
        # an empty one: the failed move above left its schema in `app`
        managed.sql("CREATE DATABASE fresh")
        proc = invoke(
            "db.move",
            "--mode",
            "replicate",
            env=cli_env(env, managed.url.replace("/app?", "/fresh?"), **untrusted),
        )
        last = assert_nothing_moved(settings, before, proc)
        assert (
            "the target does not accept the relay's certificate" in last
            and "certificate verify failed" in last
        ), last
        local = [*dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings), "-c"]
        assert runner.run([*local, "SHOW ssl_cert_file"]).stdout.strip() == "server.crt"
        assert (
            runner.run(
                ["docker", "exec", f"{settings.project}-postgres-1", "sh", "-c", 'ls "$PGDATA"']
            ).stdout.count("colorgate-relay")
            == 0
        )
        assert runner.run([*local, "SELECT count(*) FROM pg_publication"]).stdout.strip() == "0"
        assert (
            runner.run(
                [*local, "SELECT count(*) FROM pg_roles WHERE rolname = 'colorgate_move'"]
            ).stdout.strip()
            == "0"
        )
    with gates.edge_client(settings) as client:  # nothing of the local data was touched
        after = client.get("/api/notes").json()
    assert after[: len(notes)] == notes


def test_a_write_that_reaches_the_local_database_after_the_restore_stops_the_move_before_its_switch(
    settings, env
):
    """Forced: with the move paused before its pre gates (the target restored and
    compared), the local database takes an UPDATE that passes the freeze's refusal (a
    superuser's session in replication's role does). The comparison just before the
    switch finds it: traffic and data stay where they were, and the local database takes
    writes again."""
    before = edge.read_active(settings)
    with gates.edge_client(settings) as client:
        assert (
            client.post(
                "/api/notes", json={"body": "to-be-changed"}, headers={"Connection": "close"}
            ).status_code
            == 201
        )
    local = dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings)
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as managed:
        with paused_at("pre_gates", "db.move", env=cli_env(env, managed.url)) as proc:
            refused = runner.run(
                local,
                input="UPDATE notes SET body = 'refused' WHERE body = 'to-be-changed';",
                check=False,
            )
            assert (
                refused.returncode != 0 and "this database takes no writes now" in refused.stderr
            ), refused.stderr
            runner.run(
                local,
                input="SET session_replication_role = replica; UPDATE notes SET body = 'changed' WHERE body = 'to-be-changed';",
            )
            proc.send_signal(signal.SIGUSR1)
        last = assert_nothing_moved(settings, before, proc.result)
    assert (
        "a write reached the local database after the restore: it differs from the copy, row by row, in public.notes"
        in last
    ), last
    assert (
        runner.run(
            local, input="SELECT count(*) FROM pg_trigger WHERE tgname = 'colorgate_freeze';"
        ).stdout.strip()
        == "0"
    )


def assert_moved(settings, env, managed: Managed, writer: Writer, mode: str) -> dict:
    """Zero lost: every acknowledged write is on the new database; every refused write
    was told so (503, Retry-After); nothing else went wrong."""
    assert writer.errors == [], writer.errors[:5]
    assert all(code == 503 and retry == "5" for code, retry, _ in writer.refused)
    lost = writer.lost(managed)
    assert not lost, f"{len(lost)} acknowledged writes missing on the new database, e.g. {lost[:5]}"
    on_target = set(managed.sql("SELECT body FROM notes").split())
    assert not {body for _, _, body in writer.refused} & on_target, (
        "a refused write was stored anyway"
    )
    assert len(writer.acked) > 20
    record = edge.read_history(settings)[-1]
    assert (record["action"], record["outcome"]) == (
        "db.move",
        "switched",
    ) and f"{mode} to postgresql://admin@" in record["detail"]
    assert edge.read_database_record(settings)["url"] == urls.shown_url(managed.url)
    live = edge.read_active(settings)
    states = facts.service_states(settings)
    assert states[f"backend_{live.color}"].database == urls.shown_url(managed.url)
    assert not edge.is_frozen(settings) and "dbrelay" not in states
    # the old database is untouched and still there; the old color, stopped by the move (nothing
    # of it may write there any more), keeps it, so no switching back
    assert states["postgres"].state == "running"
    assert {s.state for s in states.values() if s.color == record["from_color"]} == {"exited"}
    back = invoke("rollback", env=env)
    assert (
        back.returncode == errors.FAILED
        and "switching would serve stale data" in back.stderr
        and edge.read_active(settings) == live
    )
    # the configuration must follow: without DATABASE_URL nothing deploys
    refused = invoke("deploy", env=env)
    assert (
        refused.returncode == errors.BAD_INPUT and "set DATABASE_URL to that URL" in refused.stderr
    )
    return record


class GetWriter:
    """A client of a GET that writes (the sample's /api/notes/new, as an audit row or a
    last_seen is written), which the edge's freeze lets through: each answer stored (201)
    or refused by the database (500, said), nothing else."""

    def __init__(self, settings):
        self.settings, self.stop = settings, threading.Event()
        self.acked, self.refused, self.errors = [], [], []
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with gates.edge_client(self.settings) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    r = client.get(f"/api/notes/new?body=g{n}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"g{n}: {exc!r}")
                    continue
                if r.status_code == 201:
                    self.acked.append(f"g{n}")
                elif r.status_code == 500 and "this database takes no writes now" in r.text:
                    self.refused.append(f"g{n}")
                else:
                    self.errors.append(f"g{n}: HTTP {r.status_code} {r.text[:80]}")
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_dump_move_under_writes_loses_nothing(settings, env):
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as managed:
        with Writer(settings) as writer, GetWriter(settings) as getter:
            # a hold shorter than the dump's freeze: writes still held at the bound are refused
            proc = invoke(
                "db.move",
                "--mode",
                "dump",
                env=cli_env(env, managed.url, COLORGATE_HOLD_SECONDS="1"),
            )
        assert proc.returncode == 0, proc.stderr
        # a GET that writes passes the edge's freeze: in the freeze the local database refused it, aloud
        assert getter.errors == [] and getter.refused and getter.acked, (
            getter.errors[:3],
            len(getter.refused),
        )
        on_target = set(managed.sql("SELECT body FROM notes WHERE body LIKE 'g%'").split())
        assert set(getter.acked) <= on_target and not set(getter.refused) & on_target
        local = dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings)
        # nor will it
        assert (
            "this database takes no writes now"
            in runner.run(local, input="DELETE FROM notes;", check=False).stderr
        )
        assert managed.password not in proc.stdout + proc.stderr
        assert "write freeze lasted" in proc.stderr
        record = assert_moved(settings, env, managed, writer, "dump")
        assert writer.refused, "no write was refused at the 1 s bound of a longer freeze"
        print(
            f"\ndump move: write freeze {record['timings']['write_freeze']:.2f}s, {len(writer.acked)} acked, "
            f"{len(writer.refused)} refused, timings {record['timings']}"
        )
        moved = cli_env(env, DATABASE_URL=managed.url)
        # the dump the move restored is a verified backup of the local database: it may retire
        retired = invoke("db.retire-local", env=moved)
        assert retired.returncode == 0, retired.stderr
        states = facts.service_states(settings)
        assert "postgres" not in states, (retired.stdout, retired.stderr, states.get("postgres"))
        assert states[f"backend_{record['from_color']}"].state == "exited"
        # and the next gated release runs on the managed database alone, with a URL that names no CA: the
        # app checks the server (verify-full) against this machine's system CAs (SSL_CERT_FILE stands for them)
        ca = parse_qs(urlsplit(managed.url).query)["sslrootcert"][0]
        proc = invoke(
            "deploy", env=cli_env(env, DATABASE_URL=managed.url.split("?")[0], SSL_CERT_FILE=ca)
        )
        assert proc.returncode == 0, proc.stderr
        live = edge.read_active(settings).color
        given = runner.run(
            [
                "docker",
                "exec",
                facts.container(settings, f"backend_{live}"),
                "cat",
                "/run/colorgate-secrets/database_url",
            ]
        )
        assert (
            "sslmode=verify-full" in given.stdout
            and "sslrootcert=/run/colorgate-db/root.crt" in given.stdout
        )
        with gates.edge_client(settings) as client:
            assert client.post("/api/notes", json={"body": "after-retire"}).status_code == 201
        assert "after-retire" in managed.sql("SELECT body FROM notes")
        backup = invoke("db.backup", env=moved)
        assert backup.returncode == 0 and "(postgresql://admin@" in backup.stderr


def test_replicate_move_under_writes_loses_nothing(request):
    env = move_env("rp")
    settings = profiles.load("development", environ={**os.environ, **env})
    with (
        running_stack(request, settings),
        managed_postgres(settings, managed_image(settings)) as managed,
    ):
        with gates.edge_client(settings) as client:
            for i in range(200):
                client.post("/api/notes", json={"body": f"seed-{i}"})
        with Writer(settings) as writer:
            proc = invoke(
                "db.move",
                "--mode",
                "replicate",
                env=cli_env(env, managed.url, COLORGATE_HOLD_SECONDS="30"),
            )
        assert proc.returncode == 0, proc.stderr
        assert managed.password not in proc.stdout + proc.stderr
        # the target checked the local database's certificate through the relay
        assert (
            "relay TLS: the target checks the relay's certificate" in proc.stderr
            and ", sslmode=verify-full)" in proc.stderr
        )
        record = assert_moved(settings, env, managed, writer, "replicate")
        # within the hold bound nothing is refused: writes that came during the freeze were held,
        # then answered by the new color, on the new database
        assert not writer.refused and writer.held, (len(writer.refused), len(writer.held))
        assert {color for _, color, _ in writer.held} == {record["to_color"]}
        print(
            f"\nreplicate move: write freeze {record['timings']['write_freeze']:.2f}s, {len(writer.acked)} acked, "
            f"{len(writer.refused)} refused, timings {record['timings']}"
        )
        # sequences came along: new rows get fresh ids on the new database
        assert int(managed.sql("SELECT last_value FROM notes_id_seq")) >= int(
            managed.sql("SELECT max(id) FROM notes")
        )
        # replication is gone on both sides
        assert managed.sql("SELECT count(*) FROM pg_subscription") == "0"
        local = [*dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings), "-c"]
        assert (
            runner.run([*local, "SELECT count(*) FROM pg_replication_slots"]).stdout.strip() == "0"
        )
        assert (
            runner.run(
                [*local, "SELECT count(*) FROM pg_roles WHERE rolname = 'colorgate_move'"]
            ).stdout.strip()
            == "0"
        )
        # retire-local wants a verified backup of the local database from after the move
        moved = cli_env(env, DATABASE_URL=managed.url)
        local_settings = dataclasses.replace(settings, database_url="")
        taken = db.list_backups(local_settings)[-1]["manifest"]["name"]
        verify.record_verify(local_settings, taken, False, "marked unusable by the test")
        refused = invoke("db.retire-local", env=moved)
        assert (
            refused.returncode == errors.FAILED
            and "no verified backup of the local database taken since the move" in refused.stderr
        )
        assert facts.service_states(settings)["postgres"].state == "running"
        assert invoke("db.backup", "--local", env=moved).returncode == 0
        assert invoke("db.verify", "latest", env=moved).returncode == 0
        retired = invoke("db.retire-local", env=moved)
        assert retired.returncode == 0 and "postgres" in retired.stdout, retired.stderr
