"""The fault matrix: the real CLI, stopped at a named phase
(COLORGATE_PAUSE_AT makes it wait there), then killed: SIGKILL (no clean-up can run:
the lock, the freeze, the record stay behind) or SIGTERM (a cancelled CI job: the same
clean-up as an error). After each, the invariants: the edge answers from exactly the
color its routing file names; the history says what happened; the next command
repairs what was left, or refuses in one line that says how."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks.db_move import Writer, managed_postgres
from deploy import colors, config, edge, errors, profiles, stack
from deploy.data import db, verify
from deploy.edge import locking, tls
from deploy.release import canary, gates, history
from deploy.target import connections, dbfacts, facts, runner

from .conftest import INVOKE, invoke, paused_at, running_stack
from .test_move import move_env


@pytest.fixture(scope="module")
def env():
    return move_env("crash")


@pytest.fixture(scope="module")
def settings(request, env):
    s = profiles.load("development", environ={**os.environ, **env})
    with running_stack(request, s):
        yield s


def killed_at(phase: str, sig: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `invoke ARGS` until it reaches `phase`, then send it `sig`; its output."""
    with paused_at(phase, *args, env=env) as proc:
        proc.send_signal(sig)
    return proc.result


def killed_in(
    phase: str, sig: int, after: float, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """Run `invoke ARGS` to `phase`, let it go on, and send it `sig` `after` seconds
    into the step that follows (a kill inside a step: mid `docker compose up`, mid
    pg_restore; wherever it lands, the invariants must hold)."""
    with paused_at(phase, *args, env=env) as proc:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(after)
        proc.send_signal(sig)
    return proc.result


def local_writes(settings: config.Settings) -> set[str]:
    """The notes in the stack's own PostgreSQL."""
    return set(
        runner.run(
            dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings),
            input="SELECT body FROM notes;",
        ).stdout.split()
    )


def one_offs(settings: config.Settings) -> list[str]:
    """One-off dbtools containers of the project (a pg_dump, pg_restore, psql) left running."""
    return runner.run(
        [
            "docker",
            "ps",
            "--all",
            "--filter",
            f"name={settings.project}-dbtools-run-",
            "--format",
            "{{.Names}} {{.State}} {{.Status}} {{.Command}}",
        ]
    ).stdout.splitlines()


def served(settings: config.Settings) -> set[str]:
    """The colors that answered 10 requests through the public edge (all 200)."""
    colors = set()
    with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
        for _ in range(10):
            r = client.get("/api/version", headers={"Connection": "close"})
            assert r.status_code == 200, r.text
            colors.add(r.headers["x-colorgate-color"])
    return colors


def assert_one_color(settings: config.Settings) -> edge.Active:
    live = edge.read_active(settings)
    assert served(settings) == {live.color}
    return live


def last(settings: config.Settings, action: str | None = None) -> dict:
    return [r for r in edge.read_history(settings) if action is None or r["action"] == action][-1]


BEFORE_THE_SWITCH = ["images", "start", "migrations", "pre_gates"]


@pytest.mark.parametrize("phase", BEFORE_THE_SWITCH)
def test_sigterm_before_the_switch_leaves_traffic_and_unlocks(settings, env, phase):
    before = assert_one_color(settings)
    proc = killed_at(phase, signal.SIGTERM, "deploy", env=env)
    assert proc.returncode == 128 + signal.SIGTERM and proc.stderr.strip().endswith(
        "colorgate: interrupted by SIGTERM"
    )
    assert assert_one_color(settings) == before
    record = last(settings, "deploy")
    assert (record["outcome"], record["detail"], record["live_color"]) == (
        "interrupted",
        f"interrupted at {phase} (SIGTERM)",
        before.color,
    )
    if phase != "images":  # from its start on, the candidate is stopped again
        states = facts.service_states(settings)
        assert all(
            states[s].state == "exited"
            for s in settings.app.color_services(record["to_color"])
            if s in states
        )
    assert edge.read_lock(settings) is None


@pytest.mark.parametrize("phase", BEFORE_THE_SWITCH)
def test_sigkill_before_the_switch_leaves_traffic_and_the_next_deploy_ships_after_breaking_the_lock(
    settings, env, phase
):
    before = assert_one_color(settings)
    proc = killed_at(phase, signal.SIGKILL, "deploy", env=env)
    assert proc.returncode == -signal.SIGKILL
    assert assert_one_color(settings) == before
    assert edge.read_lock(settings).phase == phase
    proc = invoke("deploy", "--break-lock", env=env)
    assert proc.returncode == 0, proc.stderr
    after = assert_one_color(settings)
    assert after.color != before.color
    dead = [r for r in edge.read_history(settings) if r["action"] == "deploy"][-2]
    assert (
        dead["outcome"] == "interrupted" and f"ended without a record at {phase}" in dead["detail"]
    )
    assert dead["live_color"] == before.color


def test_sigterm_in_the_post_gates_switches_back_to_the_verified_color(settings, env):
    before = assert_one_color(settings)
    proc = killed_at("post_gates", signal.SIGTERM, "deploy", env=env)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    # the new color was live, unverified: traffic went back
    assert assert_one_color(settings) == before
    record = last(settings, "deploy")
    assert (record["outcome"], record["detail"]) == (
        "interrupted",
        "interrupted at post_gates (SIGTERM)",
    )
    assert (record["live_color"], record["live_version"]) == (before.color, before.version)
    assert edge.read_lock(settings) is None
    # nothing moved for good: rollback goes to where traffic was before the last real move
    assert history.previous_color(edge.read_history(settings)) != (
        record["to_color"],
        record["to_version"],
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_canary_deploy_killed_mid_canary_leaves_no_user_on_the_unwatched_release(
    settings, env, sig
):
    """SIGTERM: its clean-up ends the canary and stops the candidate. SIGKILL: the canary
    outlives it (a share of users on a release nobody judges) until the next command,
    which ends it before anything else."""
    before = assert_one_color(settings)
    proc = killed_in("canary 10%", sig, 2.0, "deploy", "--canary", "10", env=env)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + sig and proc.stderr.strip().endswith(
            "colorgate: interrupted by SIGTERM"
        ), proc.stderr
        assert canary.read(settings) is None and edge.read_lock(settings) is None
        record = last(settings, "deploy")
        # in the canary's analysis
        assert record["outcome"] == "interrupted" and record["detail"].endswith("(SIGTERM)"), record
    else:
        assert proc.returncode == -signal.SIGKILL
        left = canary.read(settings)
        assert left and left["percent"] == 10 and left["color"] != before.color  # users still split
        fixed = invoke("switch", "--to", before.color, "--break-lock", env=env)
        assert (
            fixed.returncode == 0
            and "a deploy that died left its canary: every user is on the live color again"
            in fixed.stderr
        ), fixed.stderr
        assert canary.read(settings) is None
    assert assert_one_color(settings) == before


def test_sigkill_in_the_post_gates_leaves_a_lock_that_stops_beating_and_is_broken_on_record(
    settings, env
):
    before = assert_one_color(settings)
    with paused_at("post_gates", "deploy", env=env) as proc:
        # a holder that lives beats (from HEARTBEAT_SECONDS after it took the lock on)
        time.sleep(2 * edge.HEARTBEAT_SECONDS + 1)
        assert edge.read_lock(settings).age <= edge.HEARTBEAT_SECONDS + 1, (
            "a living holder's lock stopped beating"
        )
        proc.send_signal(signal.SIGKILL)
    proc = proc.result
    assert proc.returncode == -signal.SIGKILL
    moved = assert_one_color(settings)  # the switch happened; nothing could switch back
    assert moved.color != before.color
    # the lock stays, says where its holder was, and its heartbeat stops
    held = edge.read_lock(settings)
    assert held.holder["command"] == "deploy" and held.phase == "post_gates"
    time.sleep(edge.HEARTBEAT_SECONDS + 2)
    assert edge.read_lock(settings).age >= edge.HEARTBEAT_SECONDS + 1, (
        "the dead holder's heartbeat went on"
    )
    refused = invoke("deploy", env=env)
    # its process is gone from this machine: known dead at once, not only once its heartbeat is old
    assert (
        refused.returncode == errors.LOCKED
        and "release lock is left by a run that died: deploy by " in refused.stderr
    )
    assert ", at post_gates, whose process is gone from this machine" in refused.stderr
    status = invoke("status", env=env).stdout
    assert (
        "release lock: deploy by " in status
        and "at post_gates, last heartbeat" in status
        and "(DEAD: its process is gone" in status
    )
    # what breaks it is never shown
    assert held.token and held.token not in invoke("status", "--json", env=env).stdout
    assert last(settings, "deploy")["outcome"] == "running"  # its intent, never settled
    # the operator breaks it and rolls back: the dead run's record is closed, the break recorded
    proc = invoke("rollback", "--break-lock", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (
        "breaking the release lock of deploy by " in proc.stderr
        and "ended without a record" in proc.stderr
    )
    assert assert_one_color(settings) == before
    records = edge.read_history(settings)
    dead = [r for r in records if r["action"] == "deploy"][-1]
    assert (
        dead["outcome"] == "interrupted"
        and "ended without a record at post_gates" in dead["detail"]
    )
    assert dead["live_color"] == moved.color
    assert [r["action"] for r in records[-2:]] == ["break-lock", "rollback"] and records[-1][
        "outcome"
    ] == "switched"
    assert edge.read_lock(settings) is None


def test_sigkill_inside_the_candidates_compose_up_leaves_traffic_and_the_next_deploy_ships(
    settings, env
):
    before = assert_one_color(settings)
    # its `docker compose up` goes on, orphaned
    proc = killed_in("start", signal.SIGKILL, 0.3, "deploy", env=env)
    assert proc.returncode == -signal.SIGKILL
    assert assert_one_color(settings) == before
    shipped = invoke("deploy", "--break-lock", env=env)
    assert shipped.returncode == 0, shipped.stderr
    after = assert_one_color(settings)
    assert after.color != before.color and last(settings, "deploy")["outcome"] == "switched"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_backup_killed_mid_dump_loses_no_backup_and_lists_no_partial_one(settings, env, sig):
    kept = db.backup(settings)["name"]
    assert verify.verify(settings, kept).usable
    proc = subprocess.Popen(
        [INVOKE, "db.backup"],
        env={**os.environ, **env},
        cwd=config.project_root(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if line.startswith("-> backing up"):
            break
    time.sleep(0.3)  # inside the dump: its snapshot exported, pg_dump running
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM)
    if sig == signal.SIGTERM:
        # its dump container was stopped with it, not left to go on alone
        assert not one_offs(settings)
    time.sleep(2)  # what it left running (orphaned docker clients) ends
    listed = db.list_backups(settings)
    assert kept in [
        b["manifest"]["name"] for b in listed
    ]  # the newest verified backup is still there
    # only complete ones, each with its manifest
    assert all(b["manifest"].get("sha256") for b in listed)
    again = invoke("db.backup", env=env)
    assert again.returncode == 0, again.stderr
    assert verify.verify(settings, db.list_backups(settings)[-1]["manifest"]["name"]).usable


def test_a_broken_lock_stays_with_whoever_broke_it_and_its_old_holder_changes_nothing(
    settings, env
):
    """A run whose stale lock another operator broke neither switches nor freezes (its
    writes check its token at the edge) nor removes the new holder's lock when it ends."""
    before = assert_one_color(settings)
    with locking.lock(settings, "deploy"):
        read = edge.read_lock(settings)
        edge.in_edge(
            settings,
            [
                "touch",
                "-d",
                f"@{int(time.time()) - edge.STALE_SECONDS - 5}",
                f"{edge.LOCK_DIR}/heartbeat",
            ],
        )
        edge.in_edge(settings, edge.break_lock_cmd(read.token))  # another operator's --break-lock,
        # and its lock
        edge.in_edge(settings, edge.lock_cmd('{"command": "switch"}', "another-token"))
        with pytest.raises(errors.LockHeld, match="release lock was broken meanwhile"):
            edge.write_active(settings, colors.other(before.color), before.version)
        with pytest.raises(errors.LockHeld):
            edge.set_frozen(settings, True)
    assert assert_one_color(settings) == before and not edge.is_frozen(settings)
    assert edge.read_lock(settings).holder == {
        "command": "switch"
    }  # the first run ended; the lock is not its own
    edge.in_edge(settings, edge.unlock_cmd("another-token"))
    assert edge.read_lock(settings) is None


def test_an_edge_restarted_mid_release_serves_the_routing_file_and_the_release_goes_on(
    settings, env
):
    before = assert_one_color(settings)
    with paused_at("post_gates", "deploy", env=env) as proc:
        moved = edge.read_active(settings)
        runner.run(["docker", "restart", "--time", "2", edge.edge_container(settings)])
        stack.wait_ready(settings, ["edge"])
        # the routing file is on a volume: the edge reads it at start
        assert assert_one_color(settings) == moved
        proc.send_signal(signal.SIGUSR1)
    assert proc.result.returncode == 0, proc.result.stderr
    assert assert_one_color(settings) == moved and moved.color != before.color
    assert last(settings, "deploy")["outcome"] == "switched" and edge.read_lock(settings) is None


def test_every_container_killed_at_once_comes_back_serving_the_same_color_with_every_write(
    settings, env
):
    """A host that lost power: every container SIGKILLed, then started as the engine does at boot."""
    before = assert_one_color(settings)
    with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
        written = [
            client.post("/api/notes", json={"body": f"before the outage {i}"}).json()["id"]
            for i in range(5)
        ]
    running = [s.service for s in facts.service_states(settings).values() if s.state == "running"]
    names = [facts.container(settings, name) for name in running]
    runner.run(["docker", "kill", *names])
    threads = [
        threading.Thread(target=runner.run, args=(["docker", "start", name],)) for name in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack.wait_ready(settings, running)
    stack.wait_healthy(settings, before.color)
    assert assert_one_color(settings) == before
    with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
        assert all(client.get(f"/api/notes/{i}").status_code == 200 for i in written)
    status = invoke("status", env=env)
    assert status.returncode == 0 and "release lock" not in status.stdout
    assert invoke("deploy", env=env).returncode == 0


def test_restore_killed_inside_its_freeze_leaves_the_backups_and_the_next_command_opens_writes(
    settings, env
):
    name = db.backup(settings)["name"]
    assert verify.verify(settings, name).usable
    proc = killed_at("restore", signal.SIGKILL, "db.restore", name, env=env)
    assert proc.returncode == -signal.SIGKILL and edge.is_frozen(settings)
    names = [b["manifest"]["name"] for b in db.list_backups(settings)]
    # the one to restore, and the fresh one taken before it
    assert name in names and names[-1] != name
    live = edge.read_active(settings)
    # any locked command: this one changes nothing else
    fixed = invoke("switch", "--to", live.color, "--break-lock", env=env)
    assert (
        fixed.returncode == 0
        and "writes open again" in fixed.stderr
        and not edge.is_frozen(settings)
    )
    assert [r for r in edge.read_history(settings) if r["action"] == "db.restore"][-1][
        "outcome"
    ] == "interrupted"


@contextlib.contextmanager
def restore_held_in_pg_restore(
    settings: config.Settings,
) -> Iterator[tuple[str, int, subprocess.Popen]]:
    """A verified backup, a note written after it, and a reader holding the notes table:
    a restore of that backup waits inside pg_restore (--clean drops the table), so a
    signal sent a moment after its phase lands there. Yields (backup, note id, reader)."""
    name = db.backup(settings)["name"]
    assert verify.verify(settings, name).usable
    with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
        after = client.post("/api/notes", json={"body": "written after the backup"}).json()["id"]
    with runner.session(dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings)) as reader:
        reader.stdin.write("BEGIN; LOCK TABLE notes IN ACCESS SHARE MODE; SELECT 'locked';\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "locked"
        yield name, after, reader


def test_restore_terminated_inside_pg_restore_changes_no_data_and_opens_writes(settings, env):
    """`docker compose run` passes no SIGTERM on: without stopping its container, the
    restore went on alone and could commit after writes were open again."""
    with restore_held_in_pg_restore(settings) as (name, after, reader):
        proc = killed_in("restore", signal.SIGTERM, 1.5, "db.restore", name, env=env)
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
        assert (
            not one_offs(settings)
            and not edge.is_frozen(settings)
            and edge.read_lock(settings) is None
        )
        reader.stdin.write("COMMIT;\n")  # had the restore gone on alone, it would go on now
    time.sleep(2)
    with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
        # one transaction, interrupted: nothing restored
        assert client.get(f"/api/notes/{after}").status_code == 200
    record = [r for r in edge.read_history(settings) if r["action"] == "db.restore"][-1]
    assert (record["outcome"], record["detail"]) == (
        "interrupted",
        "interrupted at restore (SIGTERM)",
    )


def test_restore_killed_inside_pg_restore_is_stopped_by_the_next_command_before_writes_open(
    settings, env
):
    """SIGKILL: nothing of the command can stop its pg_restore, which `docker compose run`
    leaves going on alone (here, waiting for a reader's lock). The next command, having
    broken the dead run's lock, removes it before it opens writes: a restore finishing
    later would drop what was written meanwhile."""
    with restore_held_in_pg_restore(settings) as (name, after, reader):
        proc = killed_in("restore", signal.SIGKILL, 1.5, "db.restore", name, env=env)
        assert proc.returncode == -signal.SIGKILL and edge.is_frozen(settings)
        assert one_offs(settings), "the killed restore's pg_restore should still be waiting"
        live = edge.read_active(settings)
        fixed = invoke("switch", "--to", live.color, "--break-lock", env=env)
        assert fixed.returncode == 0, fixed.stderr
        said = fixed.stderr
        assert "left 1 one-off container(s) (database tools, secret staging): removed" in said, said
        assert said.index("one-off container") < said.index("writes open again")
        assert not one_offs(settings) and not edge.is_frozen(settings)
        reader.stdin.write("COMMIT;\n")  # had the restore gone on alone, it would go on now
    time.sleep(2)
    with gates.edge_client(settings, tls.read_local_ca(settings)) as client:
        assert client.get(f"/api/notes/{after}").status_code == 200  # nothing restored


def test_a_stage_container_left_by_a_killed_run_is_removed_by_the_next_command(settings, env):
    """A run killed while it wrote the secret files leaves their never-started container,
    which compose does not list and which would keep `down --volumes` from removing the
    volumes. The next command (--break-lock) removes the dead run's; `down` any."""
    host = settings.docker_host
    made = connections.engine(
        host,
        "create_container",
        f"{settings.image_prefix}edge:latest",
        command=["true"],
        host_config=connections.engine(
            host,
            "create_host_config",
            network_mode="none",
            binds={f"{settings.project}_secrets-db": {"bind": "/stage/secrets-db", "mode": "rw"}},
        ),
        labels={
            "com.docker.compose.project": settings.project,
            "com.docker.compose.service": "colorgate-stage",
            "org.colorgate.role": locking.STAGE_ROLE,
            locking.HOLDER_LABEL: "4242424@elsewhere",
        },
    )
    dead = {
        "command": "deploy",
        "operator": "ci@elsewhere",
        "since": history.now(),
        "pid": 4242424,
        "host": "elsewhere",
    }
    edge.in_edge(
        settings, edge.lock_cmd(json.dumps(dead), secrets.token_hex(16)), "a dead run's lock"
    )
    # it died
    edge.in_edge(
        settings,
        [
            "touch",
            "-d",
            f"@{int(time.time()) - edge.STALE_SECONDS - 5}",
            f"{edge.LOCK_DIR}/heartbeat",
        ],
    )
    live = edge.read_active(settings)
    fixed = invoke("switch", "--to", live.color, "--break-lock", env=env)
    assert (
        fixed.returncode == 0
        and "left 1 one-off container(s) (database tools, secret staging): removed" in fixed.stderr
    ), fixed.stderr
    assert made["Id"] not in [c["Id"] for c in connections.engine(host, "containers", all=True)]


def test_db_move_killed_between_its_switch_and_its_record_is_repaired_by_the_next_command(
    settings, env
):
    """(Last in this module: the stack ends on a managed database that is then removed.)"""
    before = assert_one_color(settings)
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as managed:
        with Writer(settings) as writer:
            proc = killed_at(
                "record",
                signal.SIGKILL,
                "db.move",
                env={**env, "COLORGATE_MOVE_TO": managed.url, "COLORGATE_HOLD_SECONDS": "1"},
            )
        assert proc.returncode == -signal.SIGKILL
        moved = edge.read_active(settings)
        assert moved.color != before.color and edge.read_database_record(settings)["url"] == "local"
        assert edge.is_frozen(settings)  # the freeze outlived its run
        # writes stay frozen, not lost, until the next command: it lifts the freeze, repairs the record from
        # what the live color uses, and then refuses to deploy until DATABASE_URL says where the data is
        refused = invoke("deploy", "--break-lock", env=env)
        assert refused.returncode == errors.BAD_INPUT, refused.stderr
        assert "writes open again" in refused.stderr and "record repaired" in refused.stderr
        assert (
            refused.stderr.strip()
            .splitlines()[-1]
            .endswith("set DATABASE_URL to that URL, with its password, in .env.development.local")
        )
        assert (
            not edge.is_frozen(settings) and edge.read_database_record(settings)["url"] != "local"
        )
        assert assert_one_color(settings) == moved
        # every acknowledged write is where traffic goes now
        assert writer.acked and not writer.lost(managed)
        deployed = invoke("deploy", env={**env, "DATABASE_URL": managed.url})
        assert deployed.returncode == 0, deployed.stderr
        assert (
            dbfacts.color_database(
                settings, facts.service_states(settings), edge.read_active(settings).color
            )
            != "local"
        )
        dead = [r for r in edge.read_history(settings) if r["action"] == "db.move"][-1]
        assert dead["outcome"] == "interrupted" and "at record" in dead["detail"]
