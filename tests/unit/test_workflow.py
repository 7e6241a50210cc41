"""The staging workflow: valid against GitHub's workflow schema (SchemaStore's, as
vendored by check-jsonschema), and every deploy step is an invoke task an operator
runs, with options that exist: no deploy logic only in YAML."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

import tasks
from deploy import config, errors

WORKFLOW = config.project_root() / ".github" / "workflows" / "staging-blue-green.yml"


def test_workflow_is_valid_against_githubs_schema():
    checker = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _invocations() -> list[list[str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    found = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                words = shlex.split(line)
                if words and words[0].endswith("/invoke"):
                    found.append(words[1:])
    return found


def test_every_deploy_step_is_a_real_task_with_real_options():
    calls = _invocations()
    assert [c[0] for c in calls] == ["images.push", "up", "deploy", "status"]
    for name, *args in calls:
        task = tasks.ns[name]
        options = {o.replace("_", "-") for o in task.help} | {"profile"}
        for arg in args:
            if arg.startswith("--"):
                assert arg[2:] in options, f"invoke {name} has no option {arg}"


def test_the_pipeline_pushes_run_number_tags_and_keeps_the_reports():
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc[True]["push"]["branches"] == ["develop"]  # `on:` reads as True in YAML 1.1
    deploy = doc["jobs"]["deploy"]
    assert deploy["needs"] == "test" and deploy["env"]["VERSION"] == "v${{ github.run_number }}"
    secrets_used = WORKFLOW.read_text()
    for secret in ("STAGING_HOST", "STAGING_USER", "STAGING_SSH_KEY"):
        assert f"secrets.{secret}" in secrets_used
    upload = [s for s in deploy["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload and upload[0]["if"] == "always()" and upload[0]["with"]["path"] == "reports/*.xml"
    assert "make test" in [s.get("run") for s in doc["jobs"]["test"]["steps"]]


def test_the_pipeline_is_hardened():
    """GitHub's hardening guide: least permissions per job, actions pinned by commit,
    no persisted Git credentials, a known host key required, one deploy per target."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc["permissions"] == {}
    assert doc["jobs"]["test"]["permissions"] == {"contents": "read"}
    deploy = doc["jobs"]["deploy"]
    assert deploy["permissions"] == {"contents": "read", "packages": "write"}
    assert deploy["concurrency"]["cancel-in-progress"] is False and deploy["concurrency"]["group"]
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    for step in (s for s in steps if "uses" in s):
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"{step['uses']} is not pinned by commit"
        if step["uses"].startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False
    text = WORKFLOW.read_text()
    assert "ssh-keyscan -H" not in text and "exit 1" in text.split("STAGING_KNOWN_HOSTS: ${{")[1].split("- name:")[0]


RELEASE = config.project_root() / ".github" / "workflows" / "colorgate-release.yml"
CALLER = config.project_root() / "examples" / "ci" / "release.yml"


def test_the_reusable_release_workflow_and_the_example_that_calls_it_are_valid_and_audit_clean():
    checker = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(RELEASE), str(CALLER)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audit = subprocess.run([str(Path(sys.executable).with_name("zizmor")), "--offline", str(WORKFLOW), str(RELEASE), str(CALLER)],
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0 and "No findings to report" in audit.stdout, audit.stdout + audit.stderr


def test_the_reusable_workflow_runs_real_tasks_and_its_callers_give_what_it_asks():
    doc = yaml.safe_load(RELEASE.read_text())
    calls = [shlex.split(line)[1:] for step in doc["jobs"]["release"]["steps"] for line in step.get("run", "").splitlines()
             if line.strip().startswith("colorgate ")]
    assert [c[0] for c in calls] == ["images.push", "up", "deploy", "rollback", "status", "history"]
    for name, *args in calls:
        options = {o.replace("_", "-") for o in tasks.ns[name].help} | {"profile"}
        assert all(a[2:] in options for a in args if a.startswith("--")), (name, args)
    call = doc[True]["workflow_call"]
    caller = yaml.safe_load(CALLER.read_text())
    for job in caller["jobs"].values():
        assert job["uses"].split("@")[0].endswith("/.github/workflows/colorgate-release.yml")
        assert {k for k, v in call["inputs"].items() if v.get("required")} <= set(job["with"]) <= set(call["inputs"])
        assert set(job["secrets"]) == set(call["secrets"])
    # the job summary says what the exit code means, a refusal apart from a flip-back
    summary = next(step["run"] for step in doc["jobs"]["release"]["steps"] if step.get("name") == "Summary")
    for code in (errors.BAD_INPUT, errors.REFUSED, errors.FLIPPED_BACK, errors.LOCKED, errors.UNREACHABLE, errors.NOTHING_TO_DO):
        assert re.search(rf"^\s*{code}\) echo .*\(exit {code}\)", summary, re.M), code
    # production runs in its environment (required reviewers there), never on a plain push to main
    assert caller["jobs"]["production"]["with"]["environment"] == "production"
    assert "startsWith(github.ref, 'refs/tags/v')" in caller["jobs"]["production"]["if"]
