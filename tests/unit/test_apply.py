"""What a changed contract changes beside the colors of a running stack, and what of it
`invoke apply` refuses to do, decided from compose's dry run and the edge's routes
(pure: no Docker); and the order of `up` and of `scale` with every failure path, from
case files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy import apply, starting
from deploy.errors import ColorgateError, ConfigError
from deploy.release import plans

from .recording import Recording, check_case

DRY = {
    "service postgres": "recreate",
    "service cache": "create",
    "service backend_green": "recreate",
    "network data": "recreate",
}


def test_changes_beside_the_colors_are_the_routes_shared_services_the_edge_and_networks():
    found = apply.changes_from(DRY, ["postgres", "cache", "edge"], "aaa", "bbb")
    assert [str(c) for c in found] == [
        "the edge's routes would be reloaded",
        "postgres would be recreated",
        "cache would be created",
        "the network data would be recreated",
    ]
    # the candidate's own copies are its release's business; the same routes change nothing
    assert (
        apply.changes_from(
            {"service backend_green": "recreate"}, ["postgres", "edge"], "aaa", "aaa"
        )
        == []
    )


def test_a_changed_network_is_refused_and_recreations_need_yes_on_staging_and_production():
    network = apply.changes_from({"network data": "recreate"}, [], "a", "a")
    with pytest.raises(
        ConfigError,
        match=r"^the options of the network data changed: Docker cannot change a network in place",
    ):
        apply.check(network, "development", True, "postgres")
    db = apply.changes_from({"service postgres": "recreate"}, ["postgres"], "a", "a")
    with pytest.raises(
        ConfigError,
        match=r"^applying this recreates postgres \(postgres after a verified backup; .*\) on production: run again with --yes$",
    ):
        apply.check(db, "production", False, "postgres")
    apply.check(db, "production", True, "postgres")
    apply.check(db, "development", False, "postgres")
    # a reload of the routes needs no consent
    apply.check(apply.changes_from({}, [], "a", "b"), "production", False, None)


def test_the_plan_says_what_would_change_or_that_nothing_would():
    assert apply.plan_lines([]) == [
        "nothing to apply: what runs beside the colors is what the contract and the settings say"
    ]
    assert apply.plan_lines(
        apply.changes_from({"service postgres": "recreate"}, ["postgres"], "a", "b")
    ) == ["-- the edge's routes: reloaded", "-- postgres: recreated"]


UP_RUNS = yaml.safe_load((Path(__file__).with_name("cases") / "up_runs.yaml").read_text())


@pytest.mark.parametrize("case", UP_RUNS, ids=[c["name"] for c in UP_RUNS])
def test_up_runs(case):
    do, raised = Recording(case.get("fail") or {}), None
    try:
        plans.execute(starting.plan_up(**case["plan"]), do, None, starting.undo_up(case["fresh"]))
    except (ColorgateError, KeyboardInterrupt) as exc:
        raised = exc
    assert do.calls == case["calls"]
    assert (raised is None) == ("fail" not in case)
    if "message" in case:
        assert re.search(case["message"], str(raised)), str(raised)


SCALE_RUNS = yaml.safe_load((Path(__file__).with_name("cases") / "scale_runs.yaml").read_text())


@pytest.mark.parametrize("case", SCALE_RUNS, ids=[c["name"] for c in SCALE_RUNS])
def test_scale_runs(case):
    check_case(case, apply.SCALE_STEPS, apply.SCALE_UNDO, "scaled", "scale")
