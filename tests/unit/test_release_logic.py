"""Release bookkeeping and gate reports, on captured text (no Docker)."""

import json
import subprocess
from pathlib import Path

import pytest

from deploy import config, edge, facts, gates, history


def test_lock_is_an_atomic_mkdir_that_reports_the_holder(tmp_path):
    cmd = edge.lock_cmd('{"command": "deploy"}')
    assert cmd[2].startswith(f"mkdir {edge.LOCK_DIR} 2>/dev/null || {{ cat {edge.LOCK_DIR}/holder")
    assert "exit 75" in cmd[2] and cmd[-1] == '{"command": "deploy"}'
    assert edge.unlock_cmd() == ["rm", "-rf", edge.LOCK_DIR]
    # the same script, on a directory of this machine: the second taker is told who holds it
    script = cmd[2].replace(edge.LOCK_DIR, str(tmp_path / "lock"))
    first = subprocess.run(["sh", "-c", script, "lock", '{"command": "deploy"}'], capture_output=True, text=True)
    second = subprocess.run(["sh", "-c", script, "lock", '{"command": "switch"}'], capture_output=True, text=True)
    assert first.returncode == 0 and second.returncode == edge.LOCK_HELD and second.stdout == '{"command": "deploy"}'


def test_holder_description():
    holder = json.dumps({"command": "deploy", "operator": "ana@laptop", "since": "2026-11-27T10:00:00+00:00", "pid": 42, "host": "laptop"})
    assert history.describe_holder(holder) == "deploy by ana@laptop since 2026-11-27T10:00:00+00:00 (pid 42 on laptop)"
    assert history.describe_holder("garbage") == "an unknown holder (unreadable lock file)"


HISTORY = "\n".join(
    json.dumps(r)
    for r in [
        {"action": "deploy", "from_color": "blue", "to_color": "green", "from_version": "v1", "to_version": "v2", "outcome": "switched"},
        {"action": "deploy", "from_color": "green", "to_color": "blue", "from_version": "v2", "to_version": "v3", "outcome": "rolled back"},
        {"action": "deploy", "from_color": "green", "to_color": "blue", "from_version": "v2", "to_version": "v4", "outcome": "refused"},
    ]
) + "\nnot json\n"


def test_history_parsing_skips_damaged_lines():
    records = edge.parse_history(HISTORY)
    assert [r["to_version"] for r in records] == ["v2", "v3", "v4"]


def test_previous_color_is_the_one_before_the_last_completed_switch():
    assert history.previous_color(edge.parse_history(HISTORY)) == ("blue", "v1")
    assert history.previous_color([]) is None


def test_history_format_shows_outcome_gates_and_detail():
    record = history.Record("deploy", "blue", "green", "v1", "v2", operator="ana", started="2026-11-27T10:00:00+00:00",
                            outcome="rolled back", detail="post gates failed", duration_s=4.2,
                            gates=[{"outcome": "passed"}, {"outcome": "failed"}])
    from dataclasses import asdict

    text = history.format_history([asdict(record)])
    assert "rolled back" in text and "gates 1/2" in text and "(post gates failed)" in text and "4.2s" in text


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


def test_a_gate_run_with_no_scenarios_is_not_a_pass():
    run = gates.GateRun("pre", "blue", "v1", 5, [], Path("r.xml"), "no tests ran in 0.01s\n")
    assert not run.passed and run.first_failure() == "no gate scenario ran (no tests ran in 0.01s)"


def test_gate_cmd_selects_phase_color_and_version():
    s = config.load("development", root=config.project_root(), environ={})
    cmd = gates.gate_cmd(s, "pre", "green", "v7", Path("/tmp/r.xml"))
    assert cmd[1:3] == ["-m", "pytest"] and cmd[cmd.index("-m", 3) + 1] == "pre"
    assert {"--target-color=green", "--target-version=v7", "--junitxml=/tmp/r.xml", "--profile=development"} <= set(cmd)


def test_settings_pass_to_the_gates_unchanged():
    s = config.load("development", root=config.project_root(), environ={"COLORGATE_HTTPS_PORT": "12345"})
    again = config.load(None, root=config.project_root(), environ=s.as_environment())
    assert again == s


@pytest.mark.parametrize(
    "out, status, header, body",
    [
        ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Colorgate-Color: green\r\n\r\n{\"a\": 1}", 200, "green", '{"a": 1}'),
        ("HTTP/1.1 503 Service Unavailable\r\n\r\n", 503, None, ""),
        ("garbage", 0, None, ""),
    ],
)
def test_curl_output_parsing(out, status, header, body):
    probe = facts.parse_curl_i("http://x", out)
    assert (probe.status_code, probe.headers.get("x-colorgate-color"), probe.text) == (status, header, body)
