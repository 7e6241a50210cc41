"""Release bookkeeping and gate reports, on captured text (no Docker)."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy import config, edge, profiles, views
from deploy.edge import locking, probes
from deploy.errors import ColorgateError, StackError
from deploy.release import gates, history
from deploy.target import runner


def _on(tmp_path, cmd: list[str], stdin=None, **kw) -> subprocess.CompletedProcess:
    """An edge command (sh -c SCRIPT ...) run here, on a state directory of this machine."""
    script = cmd[2].replace(edge.STATE_DIR, str(tmp_path))
    return subprocess.run(
        ["sh", "-c", script, *cmd[3:]], capture_output=True, text=True, input=stdin, **kw
    )


def test_the_lock_is_an_atomic_mkdir_that_reports_holder_heartbeat_and_phase(tmp_path):
    first = _on(tmp_path, edge.lock_cmd('{"command": "deploy"}', "t0ken"))
    assert first.returncode == 0 and (tmp_path / "lock" / "token").read_text() == "t0ken"
    assert _on(tmp_path, edge.phase_cmd("t0ken", "post_gates")).returncode == 0
    # not the holder: ignored
    assert _on(tmp_path, edge.phase_cmd("other", "images")).returncode == 0
    second = _on(tmp_path, edge.lock_cmd('{"command": "switch"}', "other"))
    assert second.returncode == edge.LOCK_HELD
    found = edge.parse_lock(second.stdout)
    assert (
        found == edge.LockState({"command": "deploy"}, found.age, "post_gates")
        and 0 <= found.age <= 2
        and not found.stale
    )
    read = edge.parse_lock(_on(tmp_path, ["sh", "-c", edge.READ_LOCK_SCRIPT]).stdout)
    assert (read.holder, read.phase, read.stale) == (
        found.holder,
        found.phase,
        False,
    ) and 0 <= read.age - found.age <= 1  # a second may turn
    # a heartbeat older than the bound: stale
    old = time.time() - edge.STALE_SECONDS - 10
    os.utime(tmp_path / "lock" / "heartbeat", (old, old))
    assert edge.parse_lock(_on(tmp_path, ["sh", "-c", edge.READ_LOCK_SCRIPT]).stdout).stale
    # only the token's holder unlocks: a run whose lock was broken and retaken leaves the new one
    assert _on(tmp_path, edge.unlock_cmd("other")).returncode == 0 and (tmp_path / "lock").is_dir()
    assert (
        _on(tmp_path, edge.unlock_cmd("t0ken")).returncode == 0 and not (tmp_path / "lock").exists()
    )
    assert _on(tmp_path, ["sh", "-c", edge.READ_LOCK_SCRIPT]).returncode == 0  # free


def test_taking_the_lock_reads_what_a_locked_command_decides_from_in_the_same_exec(tmp_path):
    nothing = _on(tmp_path, edge.lock_cmd("{}", "t0ken"))
    assert nothing.returncode == 0
    # a new target: no file yet
    assert edge.parse_found(nothing.stdout) == edge.Found("", False, "", None)
    assert edge.parse_found(nothing.stdout).active is None and edge.parse_found(
        nothing.stdout
    ).database == {"url": "local"}
    assert _on(tmp_path, edge.unlock_cmd("t0ken")).returncode == 0

    (tmp_path / "live").write_text(edge.render_live("green", "v7"))
    (tmp_path / "freeze").write_text(edge.render_freeze(5))
    # as written: no newline
    (tmp_path / "database.json").write_text('{"url": "postgresql://app@db.example/app"}')
    (tmp_path / "history.jsonl").write_text(HISTORY)
    (tmp_path / "canary").write_text(edge.render_canary("blue", "v8", 10, 42, 1796000000))
    found = edge.parse_found(_on(tmp_path, edge.lock_cmd("{}", "t0ken", history=True)).stdout)
    assert found.active == edge.Active("green", "v7") and found.frozen and found.canary
    assert found.database == {"url": "postgresql://app@db.example/app"}
    assert found.history == edge.parse_history(HISTORY) and len(found.history) == 3
    assert _on(tmp_path, edge.unlock_cmd("t0ken")).returncode == 0
    # not asked for
    assert edge.parse_found(_on(tmp_path, edge.lock_cmd("{}", "t0ken")).stdout).history is None

    # a damaged file stops only a command that reads it
    (tmp_path / "live").write_text("color=purple\n")
    # (the lock was ours already: refused)
    damaged = edge.parse_found(_on(tmp_path, edge.lock_cmd("{}", "t0ken")).stdout)
    assert damaged == edge.Found()
    _on(tmp_path, edge.unlock_cmd("t0ken"))
    damaged = edge.parse_found(_on(tmp_path, edge.lock_cmd("{}", "t0ken")).stdout)
    assert damaged.frozen
    with pytest.raises(StackError, match="routing state is damaged"):
        _ = damaged.active


def test_an_intent_sets_the_holders_phase_and_an_outcome_says_where_traffic_is(tmp_path):
    assert _on(tmp_path, edge.lock_cmd("{}", "t0ken")).returncode == 0
    record = {
        "id": "r1",
        "action": "switch",
        "outcome": "running",
        "detail": 'said "@live" in passing',
        "live_color": "",
        "live_version": "",
    }
    assert _on(tmp_path, edge.append_history_cmd(record, "t0ken", "pre_gates")).returncode == 0
    assert (tmp_path / "lock" / "phase").read_text() == "pre_gates"
    # not the holder: no phase
    assert _on(tmp_path, edge.append_history_cmd(record, "other", "switch")).returncode == 0
    assert (tmp_path / "lock" / "phase").read_text() == "pre_gates"

    (tmp_path / "live").write_text(edge.render_live("blue", "v1.2-rc_3"))
    final = _on(tmp_path, edge.final_history_cmd({**record, "outcome": "switched"}))
    assert final.returncode == 0 and edge.state_fields(final.stdout) == {
        "color": "blue",
        "version": "v1.2-rc_3",
    }
    last = edge.parse_history((tmp_path / "history.jsonl").read_text())
    assert last == [
        {**record, "outcome": "switched", "live_color": "blue", "live_version": "v1.2-rc_3"}
    ]

    # not a version tag: not written into the record
    (tmp_path / "live").write_text("color=blue\nversion=v1/../x\n")
    _on(tmp_path, edge.final_history_cmd(record))
    assert edge.parse_history((tmp_path / "history.jsonl").read_text())[-1] == {
        **record,
        "live_color": "blue",
        "live_version": "",
    }
    (tmp_path / "live").unlink()
    assert edge.state_fields(_on(tmp_path, edge.final_history_cmd(record)).stdout) == {
        "color": "",
        "version": "",
    }


def test_the_heartbeat_beats_while_its_holder_lives_and_stops_when_it_dies(tmp_path):
    assert _on(tmp_path, edge.lock_cmd("{}", "t0ken")).returncode == 0
    beat = tmp_path / "lock" / "heartbeat"
    os.utime(beat, (0, 0))
    script = edge.HEARTBEAT_SCRIPT.replace(edge.LOCK_DIR, str(tmp_path / "lock")).replace(
        f"sleep {edge.HEARTBEAT_SECONDS}", "sleep 0.2"
    )
    proc = subprocess.Popen(["sh", "-c", script, "heartbeat", "t0ken"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while beat.stat().st_mtime == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beat.stat().st_mtime > 0, "no beat"
        proc.stdin.close()  # the holder died: its end of the pipe closed
        assert proc.wait(timeout=3) == 0
    finally:
        proc.kill()


def test_the_heartbeats_watchdog_restarts_a_beat_that_ended_and_gives_up_on_one_that_cannot_run(
    tmp_path,
):
    starts = []

    def command():
        starts.append(time.monotonic())
        # ends twice, then beats on
        return ["sh", "-c", "sleep 0.05"] if len(starts) < 3 else ["sleep", "30"]

    lost = threading.Event()
    kept = locking.Heartbeat(command, dict(os.environ), after=0, give_up=1.2, on_lost=lost.set)
    try:
        deadline = time.monotonic() + 10
        while not (len(starts) == 3 and kept.beating()) and time.monotonic() < deadline:
            time.sleep(0.05)
        # started again each time it ended
        assert len(starts) == 3 and kept.beating() and not lost.is_set()
    finally:
        kept.end()
    failing = locking.Heartbeat(
        lambda: ["false"], dict(os.environ), after=0, give_up=0.6, on_lost=lost.set
    )
    try:
        assert lost.wait(5), "a beat that cannot run ends the command"
    finally:
        failing.end()


def test_breaking_removes_only_the_stale_lock_it_read_so_two_breakers_leave_one_holder(tmp_path):
    assert _on(tmp_path, edge.lock_cmd('{"command": "deploy"}', "dead-run")).returncode == 0
    fresh = _on(tmp_path, edge.break_lock_cmd("dead-run"))
    # its heartbeat is fresh: it runs
    assert fresh.returncode == edge.LOCK_HELD and (tmp_path / "lock").is_dir()
    old = time.time() - edge.STALE_SECONDS - 10
    os.utime(tmp_path / "lock" / "heartbeat", (old, old))
    read = edge.parse_lock(_on(tmp_path, ["sh", "-c", edge.READ_LOCK_SCRIPT]).stdout)
    assert read.stale and read.token == "dead-run"
    # both operators read the same stale lock; the first breaks it and takes it
    assert _on(tmp_path, edge.break_lock_cmd(read.token)).returncode == 0
    assert _on(tmp_path, edge.lock_cmd('{"command": "switch"}', "first")).returncode == 0
    # the second's break names the token it read, which is no longer there: the first's lock stays
    second = _on(tmp_path, edge.break_lock_cmd(read.token))
    assert second.returncode == edge.LOCK_HELD and edge.parse_lock(second.stdout).holder == {
        "command": "switch"
    }
    assert (tmp_path / "lock" / "token").read_text() == "first"
    # a holder known dead (its process gone from this machine) is broken at once
    assert (
        _on(tmp_path, edge.break_lock_cmd("first", dead=True)).returncode == 0
        and not (tmp_path / "lock").exists()
    )
    assert _on(tmp_path, edge.break_lock_cmd("anything")).returncode == 0  # free: nothing to do


def test_a_holders_writes_at_the_edge_check_its_token_there(tmp_path):
    """GUARD_SCRIPT runs a write only while the lock's token is the holder's."""
    (tmp_path / "lock").mkdir()
    (tmp_path / "lock" / "token").write_text("mine")
    write = ["sh", "-c", 'echo "$1" > "$2"', "write", "blue", str(tmp_path / "live")]
    assert _on(tmp_path, ["sh", "-c", edge.GUARD_SCRIPT, "guard", "mine", *write]).returncode == 0
    assert (tmp_path / "live").read_text() == "blue\n"
    (tmp_path / "lock" / "token").write_text("the-breakers")
    lost = _on(
        tmp_path,
        [
            "sh",
            "-c",
            edge.GUARD_SCRIPT,
            "guard",
            "mine",
            "sh",
            "-c",
            'echo "$1" > "$2"',
            "write",
            "green",
            str(tmp_path / "live"),
        ],
    )
    assert lost.returncode == edge.LOCK_LOST and (tmp_path / "live").read_text() == "blue\n"


def test_a_holder_on_this_machine_whose_process_is_gone_is_known_dead_at_once():
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = {
        "command": "deploy",
        "operator": "ana",
        "since": "x",
        "host": history.socket.gethostname(),
        "machine": locking.machine(),
    }
    assert locking.machine(), "this machine has a machine id and a boot id"
    assert locking.dead_here(edge.LockState({**here, "pid": gone.pid}, 3, "pre_gates"))
    # alive
    assert not locking.dead_here(edge.LockState({**here, "pid": os.getpid()}, 3, "pre_gates"))
    # not ours to judge
    assert not locking.dead_here(
        edge.LockState({**here, "pid": gone.pid, "host": "another"}, 3, "")
    )
    assert not locking.dead_here(
        edge.LockState({**here, "pid": gone.pid, "machine": "0" * 16 + "/x"}, 3, "")
    )
    rebooted = {
        **here,
        "pid": os.getpid(),
        "machine": locking.machine().split("/")[0] + "/an-earlier-boot",
    }
    assert locking.dead_here(edge.LockState(rebooted, 3, ""))
    message = locking.held_message(edge.LockState({**here, "pid": gone.pid}, 3, "pre_gates"))
    assert (
        message.startswith("the target's release lock is left by a run that died: deploy by ana")
        and "process is gone" in message
    )


def test_lock_messages_say_busy_or_stale():
    holder = {
        "command": "deploy",
        "operator": "ana@laptop",
        "since": "2026-11-27T10:00:00+00:00",
        "pid": 42,
        "host": "laptop",
    }
    assert (
        edge.describe_holder(holder)
        == "deploy by ana@laptop since 2026-11-27T10:00:00+00:00 (pid 42 on laptop)"
    )
    assert edge.describe_holder({}) == "an unknown holder (unreadable lock file)"
    busy = locking.held_message(edge.LockState(holder, 3, "pre_gates"))
    assert (
        busy.startswith("the target is locked by deploy by ana@laptop")
        and ", at pre_gates:" in busy
    )
    assert busy.endswith("or if it died, retry with --break-lock")
    stale = locking.held_message(edge.LockState(holder, 95, "post_gates"))
    assert (
        stale.startswith("the target's release lock is stale: deploy by ana@laptop")
        and "last heartbeat 95 s ago" in stale
    )
    assert stale.endswith("then retry with --break-lock")


HISTORY = (
    "\n".join(
        json.dumps(r)
        for r in [
            {
                "action": "deploy",
                "from_color": "blue",
                "to_color": "green",
                "from_version": "v1",
                "to_version": "v2",
                "outcome": "switched",
            },
            {
                "action": "deploy",
                "from_color": "green",
                "to_color": "blue",
                "from_version": "v2",
                "to_version": "v3",
                "outcome": "rolled back",
            },
            {
                "action": "deploy",
                "from_color": "green",
                "to_color": "blue",
                "from_version": "v2",
                "to_version": "v4",
                "outcome": "refused",
            },
        ]
    )
    + "\nnot json\n"
)


def test_history_parsing_skips_damaged_lines():
    records = edge.parse_history(HISTORY)
    assert [r["to_version"] for r in records] == ["v2", "v3", "v4"]


def test_previous_color_is_the_one_before_the_last_completed_switch():
    assert history.previous_color(edge.parse_history(HISTORY)) == ("blue", "v1")
    assert history.previous_color([]) is None


def test_a_record_written_twice_is_its_last_line_in_the_place_of_its_first():
    lines = [
        {"id": "a", "action": "deploy", "outcome": "running"},
        {"id": "b", "action": "switch", "outcome": "switched"},
        {"id": "a", "action": "deploy", "outcome": "switched"},
        {"action": "old", "outcome": "switched"},
    ]
    records = edge.parse_history("\n".join(json.dumps(r) for r in lines))
    assert [(r.get("id"), r["outcome"]) for r in records] == [
        ("a", "switched"),
        ("b", "switched"),
        (None, "switched"),
    ]


def test_rollback_goes_to_where_traffic_was_before_it_last_moved_as_the_edge_said():
    base = {
        "action": "deploy",
        "from_color": "blue",
        "to_color": "green",
        "from_version": "v1",
        "to_version": "v2",
    }
    # a switch that failed after the routing file moved: traffic did move, so that is the one to undo
    moved_anyway = {**base, "outcome": "failed", "live_color": "green", "live_version": "v2"}
    assert history.previous_color([moved_anyway]) == ("blue", "v1")
    # interrupted in its post gates and switched back: traffic never stayed; nothing to undo there
    back = {
        **base,
        "from_version": "v2",
        "to_version": "v3",
        "outcome": "interrupted",
        "live_color": "blue",
        "live_version": "v2",
    }
    assert history.previous_color([back]) is None
    assert history.previous_color([moved_anyway, back]) == ("blue", "v1")
    # a broken lock and a migration (same color) are not moves
    assert history.previous_color(
        [
            moved_anyway,
            {"action": "break-lock", "from_color": "", "outcome": "broken"},
            {**base, "to_color": "blue", "outcome": "migrated", "live_color": "blue"},
        ]
    ) == ("blue", "v1")


def test_history_format_shows_outcome_gates_and_detail():
    record = history.Record(
        "deploy",
        "blue",
        "green",
        "v1",
        "v2",
        operator="ana",
        started="2026-11-27T10:00:00+00:00",
        outcome="rolled back",
        detail="post gates failed",
        duration_s=4.2,
        gates=[{"outcome": "passed"}, {"outcome": "failed"}],
    )
    from dataclasses import asdict

    text = views.format_history([asdict(record)])
    assert (
        "rolled back" in text
        and "gates 1/2" in text
        and "(post gates failed)" in text
        and "4.2s" in text
    )
    record.rejected = "green v2"
    assert views.format_history([asdict(record)]).endswith("  [rejected: green v2]")
    assert (
        "  rejected: green v2 (traffic does not go back to it without --force)"
        in views.format_release({**asdict(record), "gates": []}).splitlines()
    )


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" tests="2">
<testcase classname="features.test_gates" name="test_ok" time="0.071"><properties>
<property name="feature" value="Health"/><property name="scenario" value="The API is healthy"/></properties></testcase>
<testcase classname="features.test_gates" name="test_bad" time="0.2"><properties>
<property name="feature" value="Upstream active"/><property name="scenario" value="The edge routes to green"/>
<property name="failed_step" value="Then the edge routes to the color and version under test"/></properties>
<failure message="AssertionError: the edge routes to blue v1, expected green v2&#10;assert ...">trace</failure></testcase>
</testsuite></testsuites>"""


def test_junit_report_gives_scenario_step_and_reason():
    scenarios = gates.parse_junit(JUNIT)
    assert [(s.feature, s.name, s.outcome) for s in scenarios] == [
        ("Health", "The API is healthy", "passed"),
        ("Upstream active", "The edge routes to green", "failed"),
    ]
    run = gates.GateRun("post", "green", "v2", 1, scenarios, Path("r.xml"), "")
    assert not run.passed
    assert run.first_failure() == (
        "scenario 'The edge routes to green' at step 'Then the edge routes to the color and version under test': "
        "AssertionError: the edge routes to blue v1, expected green v2"
    )
    assert "FAIL  Upstream active: The edge routes to green" in "\n".join(run.summary_lines())


def test_a_gate_report_is_rewritten_without_the_secrets_it_quotes(tmp_path):
    """CI uploads the reports: a failure that quoted a password must not carry it there."""
    runner.add_secret("pw-in-report-7f3a")
    report = tmp_path / "gates.xml"
    report.write_text(
        JUNIT.replace(
            "expected green v2", "expected green v2 (postgresql://app:pw-in-report-7f3a@db/app)"
        )
    )
    text = gates.redact_report(report)
    assert "pw-in-report-7f3a" not in report.read_text() and text == report.read_text()
    assert "postgresql://app:" + runner.MASK + "@db/app" in text
    assert gates.parse_junit(text)[1].outcome == "failed"


def test_a_gate_run_with_no_scenarios_is_not_a_pass():
    run = gates.GateRun("pre", "blue", "v1", 5, [], Path("r.xml"), "no tests ran in 0.01s\n")
    assert not run.passed and run.first_failure() == "no gate scenario ran (no tests ran in 0.01s)"


def test_gate_cmd_selects_phase_color_and_version():
    s = profiles.load("development", root=config.project_root(), environ={})
    cmd = gates.gate_cmd(s, "pre", "green", "v7", Path("/tmp/r.xml"))
    assert cmd[1:3] == ["-m", "pytest"] and cmd[cmd.index("-m", 3) + 1] == "pre"
    assert {
        "--target-color=green",
        "--target-version=v7",
        "--junitxml=/tmp/r.xml",
        "--profile=development",
    } <= set(cmd)


def test_settings_pass_to_the_gates_unchanged():
    s = profiles.load(
        "development", root=config.project_root(), environ={"COLORGATE_HTTPS_PORT": "12345"}
    )
    again = profiles.load(None, root=config.project_root(), environ=s.as_environment())
    assert again == s


@pytest.mark.parametrize(
    "out, status, header, body",
    [
        (
            'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Colorgate-Color: green\r\n\r\n{"a": 1}',
            200,
            "green",
            '{"a": 1}',
        ),
        ("HTTP/1.1 503 Service Unavailable\r\n\r\n", 503, None, ""),
        ("garbage", 0, None, ""),
    ],
)
def test_curl_output_parsing(out, status, header, body):
    probe = probes.parse_curl_i("http://x", out)
    assert (probe.status_code, probe.headers.get("x-colorgate-color"), probe.text) == (
        status,
        header,
        body,
    )


def test_one_record_in_full_shows_its_gates_canary_steps_analysis_marks_and_report(tmp_path):
    figures = {
        "requests": 40,
        "errors": 8,
        "error_ratio": 0.2,
        "p50_ms": 2,
        "p95_ms": 5,
        "p99_ms": 9,
    }
    calm = {**figures, "errors": 0, "error_ratio": 0.0}
    record = {
        "id": "ab12",
        "action": "deploy",
        "from_color": "blue",
        "from_version": "v1",
        "to_color": "green",
        "to_version": "v2",
        "outcome": "refused",
        "duration_s": 31.5,
        "operator": "ana@ci",
        "started": "2026-11-30T12:00:00+00:00",
        "detail": "the analysis of green's traffic failed at interval 1: 5xx 20.0% > 1.0%",
        "timings": {"pre_gates": 0.5},
        "gates": [
            {
                "phase": "pre",
                "feature": "Health",
                "name": "It answers",
                "outcome": "passed",
                "step": "",
                "message": "",
            },
            {
                "phase": "post",
                "feature": "TLS",
                "name": "Chain",
                "outcome": "failed",
                "step": "the chain",
                "message": "expired",
            },
        ],
        "analysis": {
            "canary": [
                {
                    "percent": 10,
                    "verdict": "failed",
                    "intervals": [
                        {
                            "interval": 1,
                            "verdict": "failed",
                            "broken": ["5xx 20.0% > 1.0%"],
                            "figures": figures,
                            "baseline": calm,
                        }
                    ],
                }
            ]
        },
        "marks": [{"t": 1796040012.5, "what": "canary 10%"}],
        "report": "reports/release-x.png",
    }
    text = views.format_release(record, tmp_path)
    assert (
        text.splitlines()[0]
        == "deploy blue v1 -> green v2: refused in 31.5s, by ana@ci, started 2026-11-30T12:00:00+00:00 (id ab12)"
    )
    assert (
        "    pre   PASS  Health: It answers" in text
        and "    post  FAIL  TLS: Chain - step: the chain; why: expired" in text
    )
    assert "  canary 10% of users: failed" in text
    assert (
        "    interval 1: 40 requests, 5xx 20.0%, p95 5 ms, p99 9 ms (blue: 40 requests, 5xx 0.0%, p95 5 ms, p99 9 ms): "
        "failed (5xx 20.0% > 1.0%)"
    ) in text
    assert "  marks: +12.5s canary 10%" in text
    assert text.endswith(
        "report: reports/release-x.png (not on this machine: it is written where the release ran)"
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "release-x.png").write_bytes(b"png")
    assert views.format_release(record, tmp_path).endswith("report: reports/release-x.png")
    history_ = [dict(record, id="first"), record]
    assert views.pick(history_, "1") is record and views.pick(history_, "first")["id"] == "first"
    with pytest.raises(
        ColorgateError, match=r"^no record '3' in the history \(2 kept\): give 1 for the latest"
    ):
        views.pick(history_, "3")
