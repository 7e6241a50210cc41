"""The deploy order and its failure paths, decided and run from captured facts with no
Docker: tests/unit/cases/release_plans.yaml (facts in, the plan or the refusal out) and
release_runs.yaml (a plan's steps in, which ran and the outcome out). The steps are
stand-ins that record their calls: what is under test is the order and the handling
of every failure, which `deploy.release.releases.execute` owns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy import apply, config, edge, errors, profiles
from deploy.edge import locking
from deploy.errors import ColorgateError
from deploy.release import decide, history, releases
from deploy.target import facts

from .recording import Recording

CASES = Path(__file__).with_name("cases")
PLANS = yaml.safe_load((CASES / "release_plans.yaml").read_text())
RUNS = yaml.safe_load((CASES / "release_runs.yaml").read_text())
EXIT_CODES = {
    "refused": errors.REFUSED,
    "rolled back": errors.FLIPPED_BACK,
    "failed": errors.FAILED,
}


def state(service: str, text: str) -> facts.ServiceState:
    status, health, version, database = (text.split() + ["-"] * 4)[:4]
    color = service.rsplit("_", 1)[-1]
    return facts.ServiceState(
        service,
        color,
        status,
        "" if health == "-" else health,
        "img",
        version,
        [],
        "" if database == "-" else database,
        service.rsplit("_", 1)[0],
    )


def target(raw: dict) -> decide.Target:
    active = raw.get("active")
    return decide.Target(
        active=edge.Active(*active.split()) if active else None,
        states={name: state(name, text) for name, text in (raw.get("states") or {}).items()},
        history=raw.get("history") or [],
        database=raw.get("database") or {"url": "local"},
        tags=raw.get("tags") or [],
        beside=tuple(apply.Change(*change.split()) for change in raw.get("beside") or ()),
        commit=raw.get("commit") or "",
    )


def plan_case(case: dict) -> decide.Plan:
    settings = profiles.load(
        "development", root=config.project_root(), environ=case.get("settings") or {}
    )
    args = dict(case.get("args") or {})
    t = target(case["facts"])
    if case["command"] == "deploy":
        return decide.plan_deploy(
            settings,
            t,
            args.get("version"),
            args.get("force", False),
            tuple(args.get("canary", ())),
        )
    if case["command"] == "switch":
        return decide.plan_switch(
            settings, t, args["to"], args.get("use_gates", True), force=args.get("force", False)
        )
    return decide.plan_rollback(
        settings, t, args.get("use_gates", True), force=args.get("force", False)
    )


@pytest.mark.parametrize("case", PLANS, ids=[c["name"] for c in PLANS])
def test_release_decisions(case):
    if "error" in case:
        with pytest.raises(ColorgateError) as err:
            plan_case(case)
        assert re.search(case["error"], str(err.value)), str(err.value)
        return
    plan, want = plan_case(case), case["plan"]
    if "noop" in want:
        assert (plan.noop, plan.steps) == (want["noop"], ())
        return
    assert plan.noop == ""
    assert (
        f"{plan.from_color} {plan.from_version}" == want["from"]
        and f"{plan.to_color} {plan.to_version}" == want["to"]
    )
    assert list(plan.steps) == want["steps"]
    assert plan.rebuild == want.get("rebuild", False)
    assert plan.action == want.get("action", case["command"])


@pytest.mark.parametrize("case", RUNS, ids=[c["name"] for c in RUNS])
def test_release_runs(case):
    plan = decide.Plan("deploy", "blue", "green", "v1", "v2", tuple(case["steps"]))
    record = history.Record("deploy", "blue", "green", "v1", "v2")
    steps = Recording(case.get("fail") or {})
    raised = None
    try:
        releases.execute(plan, steps, record)
    except (ColorgateError, KeyboardInterrupt) as exc:
        raised = exc
    locking.settle(record, raised)
    assert steps.calls == case["calls"]
    assert record.outcome == case["outcome"]
    assert record.rejected == case.get("rejected", "")
    if "detail" in case:  # what the history says
        assert record.detail == case["detail"]
    assert (raised is None) == (case["outcome"] == "switched")
    if case["outcome"] in EXIT_CODES:  # what a CI job's step sees
        assert raised.exit_code == EXIT_CODES[case["outcome"]], type(raised)
    if "message" in case:
        assert re.search(case["message"], str(raised)), str(raised)
