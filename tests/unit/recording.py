"""The stand-in for an operation's steps in the case-file tests: every step and undo
records its call and fails where the case says (`fail`: name -> error, gate, flipped or
interrupt), once each, as a real step fails once (a record written again after a kill
is a second call). What is under test is the order and the handling of every failure,
which the executors own (release.execute, plans.execute)."""

from __future__ import annotations

from deploy import errors, history


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
                raise errors.FlippedBack(f"post gates failed; traffic is back on {self._record.from_color}")
            if how == "interrupt":
                raise errors.Interrupted("SIGTERM")
        return step
