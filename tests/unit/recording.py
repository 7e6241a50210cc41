"""The stand-in for an operation's steps in the case-file tests: every step and undo
records its call and fails where the case says (`fail`: name -> error, gate, flipped or
interrupt), once each, as a real step fails once (a record written again after a kill
is a second call). What is under test is the order and the handling of every failure,
which the executors own (release.execute, plans.execute)."""

from __future__ import annotations

import re

from deploy import errors
from deploy.edge import locking
from deploy.release import history, plans


class Recording:
    def __init__(self, fail: dict, record: history.Record | None = None):
        self.calls: list[str] = []
        self.fail, self._record = fail, record

    def __getattr__(self, name):
        def step():
            how = self.fail.get(name) if name not in self.calls else None
            self.calls.append(name)
            if how == "error":
                raise errors.ColorgateError(f"{name} broke")
            if how == "gate":
                raise errors.GateFailed(f"{name} failed")
            if how == "flipped":  # post gates failed after the switch, and traffic went back
                self._record.outcome = "rolled back"
                raise errors.FlippedBack(
                    f"post gates failed; traffic is back on {self._record.from_color}"
                )
            if how == "interrupt":
                raise errors.Interrupted("SIGTERM")

        return step


def check_case(
    case: dict, steps: tuple[str, ...], undo, outcome: str, action: str = "op", phases: bool = True
) -> None:
    """Run a case of a plan's case file through plans.execute with a Recording, settle
    its record as `recorded` does, and check the calls in order, the outcome, and (when
    the case gives them) the record's detail and the message the operator reads. Without
    `phases`, the steps are not phases of the record (a plan inside another operation)."""
    record = history.Record(action, "blue", "blue", "v1", "v1")
    do, raised = Recording(case.get("fail") or {}, record), None
    try:
        plans.execute(steps, do, record if phases else None, undo)
        record.outcome = outcome
    except (errors.ColorgateError, KeyboardInterrupt) as exc:
        raised = exc
    locking.settle(record, raised)
    assert do.calls == case["calls"] and record.outcome == case["outcome"], (
        do.calls,
        record.outcome,
    )
    assert (raised is None) == ("fail" not in case)
    if "detail" in case:
        assert record.detail == case["detail"]
    if "message" in case:
        assert re.search(case["message"], str(raised)), str(raised)
