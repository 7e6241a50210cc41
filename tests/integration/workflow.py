"""A GitHub Actions job's steps, run here as a runner runs them: each `run:` script by
bash (`--noprofile --norc -eo pipefail`, GitHub's default shell) in the job's working
directory, with the job's and the step's `env:`, what earlier steps wrote to
$GITHUB_ENV, and $GITHUB_STEP_SUMMARY; `if:` decides as GitHub does (no `if:` means
"only while every step before succeeded"). Steps that `uses:` an action are handed to
the test's stand-ins (checkout, setup-python, upload-artifact), by the action's name.

The expressions read are the few the workflows use: a context's value (`inputs.x`,
`secrets.x`, `github.x`, `env.x`), a quoted string, `a == b`, `a != b`, `a && b`,
`a || b` and `always()`. Any other expression fails the test rather than being guessed."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")
PATH = re.compile(r"^(inputs|secrets|github|env)\.([A-Za-z_][A-Za-z0-9_-]*)$")


@dataclasses.dataclass
class Step:
    name: str
    ran: bool
    code: int | None = None
    output: str = ""


def _value(text: str, contexts: dict[str, dict[str, str]]) -> str | bool:
    text = text.strip()
    if text == "always()":
        return True
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    found = PATH.match(text)
    if not found:
        raise ValueError(f"an expression this runner does not read: {text!r}")
    return contexts[found[1]].get(found[2], "")


def evaluate(expression: str, contexts: dict[str, dict[str, str]]) -> str | bool:
    """`a || b` gives the first truthy operand (else the last), `a && b` the first falsy
    (else the last), as GitHub's operators do; `==` and `!=` compare strings."""
    options = [part.split("&&") for part in expression.split("||")]
    result: str | bool = ""
    for conjunction in options:
        for operand in conjunction:
            compared = re.split(r"\s*(==|!=)\s*", operand.strip())
            if len(compared) == 3:
                same = _value(compared[0], contexts) == _value(compared[2], contexts)
                result = same if compared[1] == "==" else not same
            else:
                result = _value(operand, contexts)
            if not result:
                break
        if result:
            return result
    return result


def substitute(text: str, contexts: dict[str, dict[str, str]]) -> str:
    return EXPRESSION.sub(lambda m: str(evaluate(m[1], contexts)), text)


def _github_env(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run_job(
    workflow: Path,
    job: str,
    *,
    inputs: dict[str, str],
    secrets: dict[str, str],
    github: dict[str, str],
    workspace: Path,
    base_env: dict[str, str],
    actions: dict[str, Callable[[dict], int]],
    scratch: Path,
    timeout: float = 900,
) -> tuple[list[Step], str]:
    """Run `job` of `workflow` in `workspace`; returns each step's outcome and the job
    summary it wrote. `actions` maps an action's name (before the @) to its stand-in,
    given the step's `with:` (expressions substituted) and returning an exit code."""
    doc = yaml.safe_load(workflow.read_text())
    declared = doc[True]["workflow_call"]  # `on:` reads as True in YAML 1.1
    given = {
        name: str(spec.get("default", "")) for name, spec in declared["inputs"].items()
    } | inputs
    spec = doc["jobs"][job]
    scratch.mkdir(parents=True, exist_ok=True)
    github_env, summary = scratch / "github_env", scratch / "step_summary"
    github_env.write_text("")
    summary.write_text("")
    contexts = {"inputs": given, "secrets": secrets, "github": github, "env": {}}
    job_env = {k: substitute(str(v), contexts) for k, v in (spec.get("env") or {}).items()}
    directory = substitute(
        ((spec.get("defaults") or {}).get("run") or {}).get("working-directory", "."), contexts
    )
    steps, failed = [], False
    for number, step in enumerate(spec["steps"]):
        name = step.get("name") or step.get("uses") or f"step {number}"
        contexts["env"] = {**job_env, **_github_env(github_env)}
        condition = step.get("if")
        if condition is None:
            runs = not failed
        else:
            runs = bool(evaluate(EXPRESSION.sub(lambda m: m[1], str(condition)), contexts))
            runs = runs and (not failed or "always()" in str(condition))
        if not runs:
            steps.append(Step(name, ran=False))
            continue
        step_env = {k: substitute(str(v), contexts) for k, v in (step.get("env") or {}).items()}
        if "uses" in step:
            action = step["uses"].split("@")[0]
            code = actions[action](
                {k: substitute(str(v), contexts) for k, v in (step.get("with") or {}).items()}
            )
            steps.append(Step(name, ran=True, code=code))
        else:
            script = scratch / f"step-{number}.sh"
            script.write_text(substitute(step["run"], contexts))
            env = {
                **base_env,
                **contexts["env"],
                **step_env,
                "GITHUB_ENV": str(github_env),
                "GITHUB_STEP_SUMMARY": str(summary),
                "CI": "true",
                "GITHUB_ACTIONS": "true",
            }
            proc = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                cwd=workspace / directory,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            code = proc.returncode
            steps.append(Step(name, ran=True, code=code, output=proc.stdout + proc.stderr))
        failed = failed or code != 0
    return steps, summary.read_text()


def environment_without_colorgate() -> dict[str, str]:
    """This process's environment less what would reach past the workflow: Colorgate's
    and PostgreSQL's settings, and this virtualenv."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COLORGATE_", "POSTGRES_", "VIRTUAL_ENV", "PYTHON"))
    }
