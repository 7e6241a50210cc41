"""What the next locked command repairs after a run that died, and in which order
(recover.plan_repairs, from cases/repairs.yaml; no Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy.release import recover

CASES = yaml.safe_load((Path(__file__).with_name("cases") / "repairs.yaml").read_text())
NOTHING = dict(
    active=False,
    frozen=False,
    canary_left=False,
    dead_run=False,
    relay_left=False,
    thorough=False,
    local=False,
    retired=False,
    workers_stopped=False,
)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_repairs(case):
    assert list(recover.plan_repairs(**{**NOTHING, **case["facts"]})) == case["repairs"]
