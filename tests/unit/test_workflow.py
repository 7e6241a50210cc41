"""The workflows: the reusable release an app's repository calls, its example caller,
and Colorgate's own staging (which calls it too): valid against GitHub's workflow
schema (SchemaStore's, as vendored by check-jsonschema), actionlint and zizmor clean,
hardened, and every step a task an operator runs, with options that exist."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

import tasks
from deploy import config, errors

WORKFLOW = config.project_root() / ".github" / "workflows" / "staging-blue-green.yml"
RELEASE = config.project_root() / ".github" / "workflows" / "colorgate-release.yml"
CALLER = config.project_root() / "examples" / "ci" / "release.yml"


def test_workflow_is_valid_against_githubs_schema():
    checker = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_colorgate_releases_its_own_staging_through_the_reusable_workflow_after_its_tests():
    """One release path: Colorgate's staging calls the workflow an app's repository
    calls (tested step by step against an SSH host in the integration tests), with this
    checkout installed, v<run number> as the version, and the tests before it."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc[True]["push"]["branches"] == ["develop"]  # `on:` reads as True in YAML 1.1
    deploy = doc["jobs"]["deploy"]
    # the same repository and commit
    assert (
        deploy["needs"] == "test" and deploy["uses"] == "$/.github/workflows/colorgate-release.yml"
    )
    assert deploy["with"] == {
        "profile": "staging",
        "environment": "staging",
        "version": "v${{ github.run_number }}",
        "colorgate": ".",
    }
    declared = yaml.safe_load(RELEASE.read_text())[True]["workflow_call"]["secrets"]
    assert (
        {k for k, v in declared.items() if v.get("required")}
        <= set(deploy["secrets"])
        <= set(declared)
    )
    assert deploy["secrets"]["known-hosts"] == "${{ secrets.STAGING_KNOWN_HOSTS }}"
    assert "make test" in [s.get("run") for s in doc["jobs"]["test"]["steps"]]


def test_the_pipeline_is_hardened():
    """GitHub's hardening guide: least permissions per job, actions pinned by commit,
    no persisted Git credentials, a known host key required, one release per target."""
    for path in (WORKFLOW, RELEASE):
        doc = yaml.safe_load(path.read_text())
        assert doc["permissions"] == {}
        for job in doc["jobs"].values():
            assert job["permissions"] in (
                {"contents": "read"},
                {"contents": "read", "packages": "write"},
            )
        steps = [s for job in doc["jobs"].values() for s in job.get("steps", [])]
        for step in (s for s in steps if "uses" in s):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (
                f"{step['uses']} is not pinned by commit"
            )
            if step["uses"].startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    release = yaml.safe_load(RELEASE.read_text())["jobs"]["release"]
    assert release["concurrency"]["cancel-in-progress"] is False and release["concurrency"]["group"]
    assert (
        yaml.safe_load(RELEASE.read_text())[True]["workflow_call"]["secrets"]["known-hosts"][
            "required"
        ]
        is True
    )
    # never a host key trusted on first use
    assert "ssh-keyscan" not in RELEASE.read_text().split("steps:")[1]


def test_the_reusable_release_workflow_and_the_example_that_calls_it_are_valid_and_audit_clean():
    checker = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(RELEASE), str(CALLER)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audit = subprocess.run(
        [
            str(Path(sys.executable).with_name("zizmor")),
            "--offline",
            str(WORKFLOW),
            str(RELEASE),
            str(CALLER),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0 and "No findings to report" in audit.stdout, (
        audit.stdout + audit.stderr
    )


def test_the_workflows_pass_actionlint_with_their_scripts_checked_by_shellcheck():
    """actionlint: expressions typed against their contexts, inputs and secrets of a
    reusable workflow as its callers give them, and each run: script through shellcheck
    (on PATH here, from the test dependencies; without it that rule is skipped)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    lint = subprocess.run(
        [str(bin_dir / "actionlint"), "-verbose", str(WORKFLOW), str(RELEASE), str(CALLER)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=config.project_root(),
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert (
        'Rule "shellcheck" was disabled' not in lint.stderr
        and "Found 0 errors in 3 files" in lint.stderr
    ), lint.stderr[-2000:]


def test_the_reusable_workflow_runs_real_tasks_and_its_callers_give_what_it_asks():
    doc = yaml.safe_load(RELEASE.read_text())
    calls = [
        shlex.split(line)[1:]
        for step in doc["jobs"]["release"]["steps"]
        for line in step.get("run", "").splitlines()
        if line.strip().startswith("colorgate ")
    ]
    assert [c[0] for c in calls] == [
        "images.push",
        "status",
        "up",
        "up",
        "deploy",
        "rollback",
        "status",
        "history",
    ]
    for name, *args in calls:
        options = {o.replace("_", "-") for o in tasks.ns[name].help} | {"profile"}
        assert all(a[2:] in options for a in args if a.startswith("--")), (name, args)
    call = doc[True]["workflow_call"]
    caller = yaml.safe_load(CALLER.read_text())
    for job in caller["jobs"].values():
        assert job["uses"].split("@")[0].endswith("/.github/workflows/colorgate-release.yml")
        assert (
            {k for k, v in call["inputs"].items() if v.get("required")}
            <= set(job["with"])
            <= set(call["inputs"])
        )
        assert (
            {k for k, v in call["secrets"].items() if v.get("required")}
            <= set(job["secrets"])
            <= set(call["secrets"])
        )
    # the job summary says what the exit code means, a refusal apart from a flip-back
    summary = next(
        step["run"] for step in doc["jobs"]["release"]["steps"] if step.get("name") == "Summary"
    )
    for code in (
        errors.BAD_INPUT,
        errors.REFUSED,
        errors.FLIPPED_BACK,
        errors.LOCKED,
        errors.UNREACHABLE,
        errors.NOTHING_TO_DO,
    ):
        assert re.search(rf"^\s*{code}\) echo .*\(exit {code}\)", summary, re.M), code
    # production runs in its environment (required reviewers there), never on a plain push to main
    assert caller["jobs"]["production"]["with"]["environment"] == "production"
    assert "startsWith(github.ref, 'refs/tags/v')" in caller["jobs"]["production"]["if"]
