"""The fault matrix's db.move cells, both modes, on a stack of their own
(run beside test_crash.py): killed before the freeze, inside the initial sync or the
copy, inside the freeze, after the switch. Invariants: traffic is on exactly one
color, the one the routing file names, with the database its record names; every
acknowledged write is on that database; after the next command no freeze, relay,
publication, slot or move role is left."""

from __future__ import annotations

import os
import signal

import pytest

from benchmarks.db_move import Writer, managed_image, managed_postgres
from deploy import edge, errors, profiles
from deploy.data import replication
from deploy.target import dbfacts, facts, runner

from .conftest import invoke, running_stack
from .test_crash import assert_one_color, killed_at, killed_in, last, local_writes, one_offs
from .test_move import move_env


@pytest.fixture(scope="module")
def env():
    return move_env("crashmv")


@pytest.fixture(scope="module")
def settings(request, env):
    s = profiles.load("development", environ={**os.environ, **env})
    with running_stack(request, s):
        yield s


@pytest.fixture(scope="module")
def pg17(settings):
    return managed_image(settings)


def moving(env: dict[str, str], managed) -> dict[str, str]:
    return {**env, "COLORGATE_MOVE_TO": managed.url, "COLORGATE_HOLD_SECONDS": "1"}


def exited_by(proc, sig: int) -> None:
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig), proc.stderr


def cleaned_up_or_left(settings, sig: int, phase: str) -> None:
    """SIGTERM ran the clean-up: lock free, no freeze, no relay, its record `interrupted`.
    SIGKILL could not: the lock stays (the next command breaks it)."""
    if sig == signal.SIGTERM:
        assert edge.read_lock(settings) is None and not edge.is_frozen(settings)
        assert "dbrelay" not in facts.service_states(settings) and not one_offs(settings)
        record = last(settings, "db.move")
        assert (record["outcome"], record["detail"]) == (
            "interrupted",
            f"interrupted at {phase} (SIGTERM)",
        )
    else:
        assert edge.read_lock(settings).phase == phase


def assert_still_local(settings, before: edge.Active, writer: Writer) -> None:
    """Traffic never left the stack's own database, which has every acknowledged write;
    nothing of the move is left."""
    assert assert_one_color(settings) == before
    assert dbfacts.color_database(settings, facts.service_states(settings), before.color) == "local"
    assert edge.read_database_record(settings)["url"] == "local"
    assert writer.acked and not set(writer.acked) - local_writes(settings)
    assert not edge.is_frozen(settings) and "dbrelay" not in facts.service_states(settings)
    assert not replication.drop(settings)  # no publication, slot or role left
    container = f"{settings.project}-postgres-1"
    served = runner.run(
        [*dbfacts.psql_cmd(container, settings), "-c", "SHOW ssl_cert_file"]
    ).stdout.strip()
    assert served == "server.crt"  # its own certificate again, not the relay's
    refusing = runner.run(
        dbfacts.psql_cmd(container, settings),
        input="SELECT count(*) FROM pg_trigger WHERE tgname = 'colorgate_freeze';",
    ).stdout.strip()
    assert refusing == "0"  # the local database takes writes again


def next_command(settings, env, before: edge.Active) -> str:
    """The next operator command (a no-op switch to the live color: it only reconciles)."""
    fixed = invoke("switch", "--to", before.color, "--break-lock", env=env)
    assert fixed.returncode == 0, fixed.stderr
    return fixed.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_dump_move_killed_inside_its_candidates_start_leaves_traffic_and_data_where_they_were(
    settings, env, sig
):
    before = assert_one_color(settings)
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as managed:
        with Writer(settings) as writer:
            proc = killed_in("start", sig, 0.3, "db.move", env=moving(env, managed))
        exited_by(proc, sig)
        cleaned_up_or_left(settings, sig, "start")
        next_command(settings, env, before)
        assert_still_local(settings, before, writer)
    shipped = invoke("deploy", env=env)  # the candidate started on the managed database is replaced
    assert shipped.returncode == 0, shipped.stderr
    now = edge.read_active(settings)
    assert dbfacts.color_database(settings, facts.service_states(settings), now.color) == "local"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_replicate_move_killed_inside_its_initial_sync_leaves_no_relay_slot_or_role(
    settings, env, pg17, sig
):
    before = assert_one_color(settings)
    with managed_postgres(settings, pg17) as managed:
        with Writer(settings) as writer:
            proc = killed_in(
                "initial_sync", sig, 0.2, "db.move", "--mode", "replicate", env=moving(env, managed)
            )
        exited_by(proc, sig)
        cleaned_up_or_left(settings, sig, "initial_sync")
        said = next_command(settings, env, before)
        if sig == signal.SIGKILL:
            assert "replication relay: removed" in said and "dropped" in said, said
        assert_still_local(settings, before, writer)


def test_a_replicate_move_killed_in_its_freeze_leaves_no_relay_slot_or_freeze_after_the_next_command(
    settings, env, pg17
):
    before = assert_one_color(settings)
    with managed_postgres(settings, pg17) as managed:
        with Writer(settings) as writer:
            proc = killed_at(
                "catch_up",
                signal.SIGKILL,
                "db.move",
                "--mode",
                "replicate",
                env=moving(env, managed),
            )
        exited_by(proc, signal.SIGKILL)
        assert edge.is_frozen(settings) and "dbrelay" in facts.service_states(settings)
        # (its cut-over container, orphaned, may finish ending the replication on its own meanwhile)
        said = next_command(settings, env, before)
        assert "writes open again" in said and "replication relay: removed" in said, said
        assert_still_local(settings, before, writer)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_dump_move_killed_in_its_freeze_mid_copy_opens_writes_and_loses_none(settings, env, sig):
    """SIGTERM as the dump starts; SIGKILL inside pg_restore into the target."""
    before = assert_one_color(settings)
    with managed_postgres(settings, f"{settings.image_prefix}postgres:latest") as managed:
        with Writer(settings) as writer:
            if sig == signal.SIGTERM:
                proc, phase = killed_at("dump", sig, "db.move", env=moving(env, managed)), "dump"
            else:
                proc, phase = (
                    killed_in("restore", sig, 0.3, "db.move", env=moving(env, managed)),
                    "restore",
                )
        exited_by(proc, sig)
        cleaned_up_or_left(settings, sig, phase)
        if sig == signal.SIGKILL:
            # writes wait (held, then 503 with Retry-After) until the next command
            assert edge.is_frozen(settings)
        said = next_command(settings, env, before)
        assert ("writes open again" in said) == (sig == signal.SIGKILL), said
        assert_still_local(settings, before, writer)


def test_a_replicate_move_terminated_after_its_switch_records_where_the_database_is(
    settings, env, pg17
):
    """(Last in this module: the stack ends on a managed database that is then removed.)
    SIGTERM at the record (a dump move SIGKILLed there is in test_crash.py): the
    clean-up writes the record, so nothing needs repairing."""
    before = assert_one_color(settings)
    with managed_postgres(settings, pg17) as managed:
        with Writer(settings) as writer:
            proc = killed_at(
                "record", signal.SIGTERM, "db.move", "--mode", "replicate", env=moving(env, managed)
            )
        exited_by(proc, signal.SIGTERM)
        moved = assert_one_color(settings)
        assert moved.color != before.color
        assert edge.read_database_record(settings)["url"] != "local" and not edge.is_frozen(
            settings
        )
        assert edge.read_lock(settings) is None and "dbrelay" not in facts.service_states(settings)
        # the cut-over ended the replication before the switch
        assert not replication.drop(settings)
        assert last(settings, "db.move")["detail"] == "interrupted at record (SIGTERM)"
        assert writer.acked and not writer.lost(managed)
        refused = invoke("deploy", env=env)
        assert refused.returncode == errors.BAD_INPUT and "record repaired" not in refused.stderr
        assert (
            refused.stderr.strip()
            .splitlines()[-1]
            .endswith("set DATABASE_URL to that URL, with its password, in .env.development.local")
        )
        deployed = invoke("deploy", env={**env, "DATABASE_URL": managed.url})
        assert deployed.returncode == 0, deployed.stderr
