"""Operations as plans: an operation's steps in order, decided by a pure function of
the facts (so a unit test sees every change to the order), run by one executor that, on
a failure or a signal, undoes what the steps began, latest first. up, scale, db.move,
db.restore, db.retire-local and the app's migrations (inside a release, db.migrate and
up) run this way, and recover orders its repairs as a plan (their case files:
tests/unit/cases/); a release's own executor (release.execute) also switches traffic
back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.edge.locking import at
from deploy.errors import ColorgateError
from deploy.release.history import Record
from deploy.target import runner


@dataclass(frozen=True)
class Undo:
    """How a plan's steps are undone: `steps` maps a step to the call that undoes it
    (while traffic has not moved); of these, `always` are undone wherever traffic is;
    `ends` maps a step to the one whose work it ends, which then needs no undo once it
    has completed."""

    steps: dict[str, str]
    always: tuple[str, ...] = ()
    ends: dict[str, str] = field(default_factory=dict)


def execute(
    steps: tuple[str, ...],
    do,
    record: Record | None,
    undo: Undo,
    moved: Callable[[list[str]], bool] | None = None,
    explain: Callable[[BaseException, list[str], bool], BaseException | None] | None = None,
) -> None:
    """Run `steps` through `do` (a method per step and per undo). On a failure (or a
    signal) what the steps began, the failing one included, is undone, latest first:
    `moved(done)` says whether traffic moved already (then only `undo.always`). The
    first undo that fails is raised (the others are still tried), as what the operator
    must act on; else `explain(exc, done, moved)` may give the error to raise instead."""
    done: list[str] = []
    completed: set[str] = set()
    try:
        for step in steps:
            at(record, step)
            done.append(step)
            getattr(do, step)()
            completed.add(step)
    except BaseException as exc:
        went = moved(done) if moved else False
        ended = {undo.ends[step] for step in completed if step in undo.ends}
        calls = [
            undo.steps[step]
            for step in reversed(done)
            if step in undo.steps and step not in ended and (not went or step in undo.always)
        ]
        problems = []
        for call in calls:
            try:
                getattr(do, call)()
            except ColorgateError as again:
                problems.append(again)
        if problems:  # what failed first is said; what the operator must do now is the error
            for said in [exc or type(exc).__name__, *problems[1:]]:
                runner.say(f"!! {said}")
            raise problems[0] from None
        explained = explain(exc, done, went) if explain else None
        if explained is not None:
            raise explained from None
        raise
