"""db.move's checks and messages, on captured psql output, and the order of db.move,
db.restore and db.retire-local with every failure path, from case files (no Docker)."""

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import config, edge, errors, profiles
from deploy.data import db, move, movecheck, relaycert, retire
from deploy.edge import locking
from deploy.errors import ColorgateError, ConfigError
from deploy.release import decide, history
from deploy.target import facts

from .recording import Recording, check_case

SHOWN = "postgresql://app@db.example.com:5432/shop"


@pytest.mark.parametrize(
    "stderr, expected",
    [
        (
            'psql: error: could not translate host name "nohost" to address: Name or service not known',
            "its host name does not resolve",
        ),
        (
            'psql: error: connection to server at "10.0.0.9", port 5432 failed: Connection refused',
            "nothing answers there",
        ),
        (
            'psql: error: connection to server at "h", port 5432 failed: timeout expired',
            "nothing answers there",
        ),
        (
            'psql: error: connection to server at "h" failed: FATAL:  password authentication failed for user "app"',
            "refused the credentials",
        ),
        ('psql: error: FATAL:  role "nobody" does not exist', "refused the credentials"),
        (
            'psql: error: FATAL:  database "shop" does not exist',
            "does not exist on the target: create it",
        ),
        (
            'psql: error: FATAL:  no pg_hba.conf entry for host "1.2.3.4"',
            "does not accept connections from this host",
        ),
        (
            'psql: error: connection to server at "h", port 5432 failed: SSL error: certificate verify failed',
            "certificate that is not signed by the CA in the URL's sslrootcert",
        ),
        (
            'psql: error: connection to server at "h", port 5432 failed: server certificate for "db.internal" does not match host name "h"',
            "certificate that does not name the URL's host",
        ),
    ],
)
def test_connection_errors_name_the_cause(stderr, expected):
    message = movecheck.explain_connect_error(stderr, SHOWN)
    assert expected in message and SHOWN in message and "\n" not in message


def test_server_facts_parse_and_major_versions():
    facts = movecheck.parse_check("version|150004\ntables|2|public.notes\nsubscribe|true\n")
    assert facts == movecheck.ServerFacts(150004, 2, "public.notes", True) and facts.major == 15
    assert movecheck.parse_check("version|90624\ntables|0|\nsubscribe|f").major == 9


def test_compatibility_checks():
    source = movecheck.ServerFacts(150004, 3, "public.notes", True)
    empty16 = movecheck.ServerFacts(160002, 0, "", True)
    movecheck.check_compatible(source, empty16, SHOWN, "replicate")
    with pytest.raises(
        move.MoveError,
        match=r"runs PostgreSQL 13, older than the local 15: .*use PostgreSQL 15 or newer",
    ):
        movecheck.check_compatible(
            source, movecheck.ServerFacts(130016, 0, "", True), SHOWN, "dump"
        )
    with pytest.raises(move.MoveError, match=r"is not empty \(1 table\(s\), e.g. public.x\)"):
        movecheck.check_compatible(
            source, movecheck.ServerFacts(150004, 1, "public.x", True), SHOWN, "dump"
        )
    with pytest.raises(move.MoveError, match="may not create a subscription"):
        movecheck.check_compatible(
            source, movecheck.ServerFacts(150004, 0, "", False), SHOWN, "replicate"
        )
    movecheck.check_compatible(source, movecheck.ServerFacts(150004, 0, "", False), SHOWN, "dump")
    # a local table without a replica identity: replicate would break the live app's UPDATE and DELETE on it
    bare = movecheck.parse_check(
        "version|150004\ntables|3|public.audit\nsubscribe|t\nnoidentity|1|public.audit\n"
    )
    assert bare.without_identity == (1, "public.audit")
    with pytest.raises(
        move.MoveError,
        match=r"^1 local table\(s\) have no replica identity \(no primary key\), e.g. public.audit: .*"
        r"`ALTER TABLE public.audit REPLICA IDENTITY FULL`, or move with --mode dump$",
    ):
        movecheck.check_compatible(bare, empty16, SHOWN, "replicate")
    movecheck.check_compatible(bare, empty16, SHOWN, "dump")


def test_target_url_is_checked_before_anything():
    with pytest.raises(ConfigError, match="^the target URL needs a user and a password"):
        movecheck.check_url("postgresql://app@db.example.com/shop")
    assert movecheck.check_url(" postgresql://a:b@h/d ") == "postgresql://a:b@h/d"


def test_freeze_is_its_own_file_with_the_hold_bound():
    assert edge.render_freeze(5).splitlines()[-1] == "hold=5"
    assert edge.freeze_cmd(True, edge.render_freeze(5))[4:] == [
        edge.FREEZE_FILE,
        edge.FREEZE_LINES,
        "hold",
        "writes=frozen",
        edge.render_freeze(5),
    ]
    held = edge.render_freeze(5, database=True).splitlines()
    assert held[1:] == ["hold=5", "requests=database"]
    assert all(re.fullmatch(edge.FREEZE_LINES, line) for line in held)


SETTINGS = profiles.load("development", root=config.project_root(), environ={})


def _backend(color, database):
    return facts.ServiceState(
        f"backend_{color}", color, "running", "healthy", "img", "v1", [], database
    )


def test_no_switch_back_to_the_database_left_behind():
    states = {"backend_blue": _backend("blue", "local"), "backend_green": _backend("green", SHOWN)}
    with pytest.raises(
        Exception,
        match=r"blue uses the database local, but the live green uses .* ship a release to blue",
    ):
        decide.check_same_database(SETTINGS, states, "green", "blue")
    decide.check_same_database(
        SETTINGS, {**states, "backend_blue": _backend("blue", SHOWN)}, "green", "blue"
    )


def test_the_relay_rules_come_first_name_the_relay_and_go_with_it(tmp_path):
    import subprocess

    from deploy.data import relay

    original = "local all all peer map=colorgate\nhost all colorgate_move 0.0.0.0/0 reject\nhost all all 0.0.0.0/0 scram-sha-256\n"
    hba = tmp_path / "pg_hba.conf"
    hba.write_text(original)
    hba.chmod(0o600)

    def run(*addresses):
        subprocess.run(
            ["sh", "-c", relay.HBA_SCRIPT, "relay-hba", *addresses],
            env={"PGDATA": str(tmp_path), "PATH": "/usr/bin:/bin"},
            check=True,
        )
        return hba.read_text()

    opened = run("172.20.0.5", "172.21.0.7")
    assert opened.splitlines()[:6] == [
        relay.HBA[0],
        "hostssl all colorgate_move 172.20.0.5/32 scram-sha-256",
        "hostssl all colorgate_move 172.21.0.7/32 scram-sha-256",
        "host all all 172.20.0.5/32 reject",
        "host all all 172.21.0.7/32 reject",
        relay.HBA[1],
    ]
    assert opened.endswith(original)
    # a relay started again: its block replaced, not added
    assert run("172.22.0.9").count(relay.HBA[0]) == 1
    # removed; the file's mode kept
    assert run() == original and oct(hba.stat().st_mode & 0o777) == "0o600"


def test_a_target_that_cannot_check_the_relay_against_its_system_cas_is_refused_unless_told_not_to_check():
    from deploy.errors import MoveError

    relaycert.verify_full_possible(16)
    relaycert.verify_full_possible(17)
    with pytest.raises(
        MoveError,
        match=r"^the target runs PostgreSQL 15, which cannot check the relay's certificate .* "
        r"set COLORGATE_MOVE_RELAY_SSLMODE=require",
    ):
        relaycert.verify_full_possible(15)


@pytest.mark.parametrize(
    "bind, guarded, allow, firewall, expected",
    [
        (
            "0.0.0.0",
            True,
            ("203.0.113.7/32",),
            "required",
            "the host firewall lets in 203.0.113.7/32 only",
        ),
        (
            "0.0.0.0",
            True,
            (),
            "required",
            "this host's firewall (server-setup.sh) lets nobody reach the replication relay",
        ),
        (
            "0.0.0.0",
            False,
            ("203.0.113.7/32",),
            "required",
            "reachable by any address, and this host has no Colorgate firewall",
        ),
        (
            "93.184.216.34",
            False,
            (),
            "required",
            "reachable by any address, and this host has no Colorgate firewall",
        ),
        (
            "0.0.0.0",
            False,
            (),
            "none",
            "no Colorgate firewall on this host (server-setup.sh), any address reaches it",
        ),
        (
            "10.0.0.5",
            False,
            (),
            "required",
            "no Colorgate firewall on this host (server-setup.sh), it listens on 10.0.0.5 only",
        ),
    ],
)
def test_a_relay_anybody_could_reach_is_refused_unless_the_operator_says_so(
    bind, guarded, allow, firewall, expected
):
    from deploy.data import relay
    from deploy.errors import MoveError

    s = dataclasses.replace(
        SETTINGS, move_relay_bind=bind, move_relay_allow=allow, move_relay_firewall=firewall
    )
    try:
        said = relay.exposure(s, guarded)
    except MoveError as exc:
        said = str(exc)
        assert expected.startswith(("this host", "reachable")) and "COLORGATE_MOVE_RELAY_" in said
    assert expected in said, said


def test_the_relay_forwards_nothing_until_opened_and_a_few_connections_at_once(tmp_path):
    from deploy import render

    sh, _, script, name, opened, cap, target = render.compose(SETTINGS.app)["services"]["dbrelay"][
        "entrypoint"
    ]
    assert (sh, opened, target) == ("sh", render.RELAY_OPEN, "TCP:postgres:5432") and int(
        cap
    ) == render.RELAY_CONNECTIONS
    # what it would run, without a socat here
    shown = script.replace("exec socat", "exec echo socat")
    gate = tmp_path / "open"
    with pytest.raises(subprocess.TimeoutExpired):  # closed: it waits
        subprocess.run(
            ["sh", "-c", shown, name, str(gate), cap, target], capture_output=True, timeout=0.5
        )
    gate.touch()
    proc = subprocess.run(
        ["sh", "-c", shown, name, str(gate), cap, target], capture_output=True, text=True, timeout=5
    )
    assert proc.stdout.split() == [
        "socat",
        f"TCP-LISTEN:5433,fork,reuseaddr,max-children={cap}",
        target,
    ]


MOVE_RUNS = yaml.safe_load((Path(__file__).with_name("cases") / "move_runs.yaml").read_text())
EXIT_CODES = {
    "refused": errors.REFUSED,
    "rolled back": errors.FLIPPED_BACK,
    "failed": errors.FAILED,
}


class RecordingMove(Recording):
    """db.move's steps and undos; the edge's answer to "did traffic move?" is the case's."""

    def __init__(self, fail: dict, moved: bool, record: history.Record):
        super().__init__(fail, record)
        self.moved = moved

    def traffic_moved(self) -> bool:
        return self.moved


@pytest.mark.parametrize("case", MOVE_RUNS, ids=[c["name"] for c in MOVE_RUNS])
def test_move_runs(case):
    steps = move.plan_steps(**case["plan"])
    if "steps" in case:
        assert list(steps) == case["steps"]
    plan = decide.Plan("db.move", "blue", "green", "v1", "v2", ())
    record = history.Record("db.move", "blue", "green", "v1", "v2")
    do = RecordingMove(case.get("fail") or {}, case.get("moved", False), record)
    raised = None
    try:
        move.execute(steps, do, record, plan, "postgresql://app@db.example.com/shop")
    except (ColorgateError, KeyboardInterrupt) as exc:
        raised = exc
    locking.settle(record, raised)
    assert do.calls == case.get("calls", case.get("steps")), do.calls
    assert record.outcome == case["outcome"]
    assert (raised is None) == (case["outcome"] == "switched")
    if "detail" in case:
        assert record.detail == case["detail"]
    if "exit" in case:
        assert raised.exit_code == EXIT_CODES[case["exit"]], type(raised)
    if "message" in case:
        assert re.search(case["message"], str(raised)), str(raised)


RESTORE_RUNS = yaml.safe_load((Path(__file__).with_name("cases") / "restore_runs.yaml").read_text())


@pytest.mark.parametrize("case", RESTORE_RUNS, ids=[c["name"] for c in RESTORE_RUNS])
def test_restore_runs(case):
    check_case(case, db.RESTORE_STEPS, db.RESTORE_UNDO, "restored", "db.restore")


RETIRE_RUNS = yaml.safe_load((Path(__file__).with_name("cases") / "retire_runs.yaml").read_text())


@pytest.mark.parametrize("case", RETIRE_RUNS, ids=[c["name"] for c in RETIRE_RUNS])
def test_retire_local_runs(case):
    check_case(case, retire.RETIRE_STEPS, retire.RETIRE_UNDO, "retired", "db.retire-local")
