"""Colorgate's command line: the `colorgate` command (invoke's Program over these
tasks) and, in a repository whose tasks.py imports `ns`, `invoke`. Argument parsing and
output only: the work is done in deploy/. Every task takes --profile (default:
$COLORGATE_PROFILE or development). Set COLORGATE_DEBUG=1 to see commands and tracebacks."""

from __future__ import annotations

import os
import sys
from importlib import metadata

from invoke import Collection, Exit, ParseError, Program

from deploy.cli import common
from deploy.cli.app import (
    apply,
    bootstrap,
    down,
    exec_,
    init,
    logs,
    maintenance,
    render,
    scale,
    status,
    up,
)
from deploy.cli.ops import (
    db_backup,
    db_backups,
    db_migrate,
    db_move,
    db_restore,
    db_retire_local,
    db_unfreeze,
    db_verify,
    images_push,
    images_send,
    secrets_check,
    server_setup,
    tls_init,
    tls_renew,
    tls_schedule,
    tls_status,
)
from deploy.cli.releases import (
    bench,
    canary_abort,
    canary_promote,
    canary_status,
    deploy,
    history,
    rollback,
    switch,
    traffic,
)
from deploy.errors import BAD_INPUT

ns = Collection(
    bootstrap,
    init,
    up,
    apply,
    down,
    status,
    render,
    logs,
    exec_,
    traffic,
    maintenance,
    deploy,
    switch,
    rollback,
    history,
    scale,
    bench,
)
ns.add_collection(Collection("tls", tls_status, tls_init, tls_renew, tls_schedule))
ns.add_collection(Collection("server", server_setup))
ns.add_collection(Collection("canary", canary_status, canary_promote, canary_abort))
ns.add_collection(Collection("images", images_push, images_send))
ns.add_collection(Collection("secrets", secrets_check))
ns.add_collection(
    Collection(
        "db",
        db_backup,
        db_backups,
        db_verify,
        db_restore,
        db_migrate,
        db_move,
        db_retire_local,
        db_unfreeze,
    )
)


_names = {t.body.__wrapped__: name for name in ns.task_names for t in [ns[name]]}
_helps = {
    name: dict(ns[name].help) for name in ns.task_names
}  # invoke takes each text out of `help` as it parses


def _help(fn) -> None:
    """A task's help, as `colorgate --help TASK` prints it."""
    for name, texts in _helps.items():
        ns[name].help = dict(texts)
    Program(namespace=ns, name="Colorgate", binary="colorgate").run(
        ["colorgate", "--help", _names[fn]], exit=False
    )


common.show_help = _help


class _Program(Program):
    """invoke's Program, whose usage errors (an unknown task or option, a missing
    argument) exit 2 like every other bad input, not 1 like a failure."""

    def _usage(self, parse, *args) -> None:
        try:
            parse(*args)
        except ParseError as exc:
            raise Exit(f"colorgate: {exc}", code=BAD_INPUT) from None

    def parse_core(self, argv) -> None:
        self._usage(super().parse_core, argv)

    def parse_tasks(self) -> None:
        self._usage(super().parse_tasks)

    def parse_cleanup(self) -> None:
        self._usage(super().parse_cleanup)


def main() -> None:
    """The `colorgate` console script."""
    try:
        version = metadata.version("colorgate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        _Program(namespace=ns, name="Colorgate", binary="colorgate", version=version).run()
    except BrokenPipeError:  # `colorgate --list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
