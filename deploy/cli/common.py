"""What every task shares: one-line errors and exit codes, the settings with --host and
--registry applied, and the engine checked reachable."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import sys

import invoke
from invoke import Exit

from deploy import appsecrets, config, profiles
from deploy import bootstrap as _bootstrap
from deploy import render as _render
from deploy.errors import BadInput, ColorgateError, CommandError, Interrupted
from deploy.target import runner, targets

DEBUG = os.environ.get("COLORGATE_DEBUG") == "1"
logging.basicConfig(level=logging.DEBUG if DEBUG else logging.WARNING, format="%(message)s")


# The help of the options many tasks share, given to each task that takes one; a task's
# own help for an option wins.
SHARED_HELP = {
    "profile": "env profile: development, staging or production",
    "host": "the Docker host to act on: ssh://user@host[:port] (default: COLORGATE_DOCKER_HOST, "
    "else this machine)",
    "registry": "registry to pull the images from, e.g. ghcr.io/acme (default: "
    "COLORGATE_REGISTRY; empty: build them)",
    "break_lock": "break a stale release lock left by a run that died (check `invoke status` first)",
}


def task(*args, help: dict[str, str] | None = None, **kwargs):
    """invoke's task, with the shared options' help, and long options only: invoke's
    automatic short flags made `-h` mean --host (so `colorgate deploy -h` asked for a host)
    and gave one letter several meanings."""

    def make(fn):
        taken = inspect.signature(fn).parameters
        shared = {name: text for name, text in SHARED_HELP.items() if name in taken}
        return invoke.task(help={**shared, **(help or {})}, auto_shortflags=False, **kwargs)(fn)

    return make(args[0]) if args and callable(args[0]) else make


# Set by deploy.cli: prints a task's help (what `colorgate --help TASK` prints).
show_help = None
HELP_WORDS = ("--help", "-h")


def operator_errors(fn):
    """Turn Colorgate errors into one line and their exit code (errors.py; a traceback only in debug).
    `--help` where a task takes a positional argument is help, not that argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if show_help and any(
            value in HELP_WORDS for value in (*args[1:], *kwargs.values()) if isinstance(value, str)
        ):
            return show_help(fn)
        runner.on_signals()  # SIGTERM, SIGHUP: the clean-up of Ctrl-C, not an abrupt end
        try:
            return fn(*args, **kwargs)
        except ColorgateError as exc:
            if DEBUG:
                raise
            # what it said before the line that says why
            if isinstance(exc, CommandError) and len(exc.tail()) > 1:
                print(
                    "\n".join(f"   | {runner.redact(line)}" for line in exc.tail()), file=sys.stderr
                )
            raise Exit(f"colorgate: {runner.redact(str(exc))}", code=exc.exit_code) from None
        except Interrupted as exc:
            raise Exit(
                f"colorgate: interrupted by {exc}",
                code=128 + getattr(signal, str(exc), signal.SIGTERM).value,
            ) from None
        except KeyboardInterrupt:
            raise Exit("colorgate: interrupted", code=130) from None
        except BrokenPipeError:  # output piped into `head` and the like
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=141) from None

    return wrapper


def whole(value, option: str, default: int, lo: int, hi: int) -> int:
    """A numeric option's value (given as text, so a typo is this line and not invoke's
    traceback), `default` when not given, checked to lie in lo..hi."""
    if value is None:
        return default
    text = str(value).strip()
    if not text.lstrip("-").isdigit() or not lo <= int(text) <= hi:
        raise BadInput(
            f"{option} takes a whole number from {lo} to {hi}, got {text!r}: e.g. {option} {default}"
        )
    return int(text)


def _load(
    profile: str | None, host: str | None = None, registry: str | None = None
) -> config.Settings:
    """Validated settings for the profile; --host and --registry override the settings."""
    overrides = {}
    if host:
        overrides["COLORGATE_DOCKER_HOST"] = ("--host", host)
    if registry:
        overrides["COLORGATE_REGISTRY"] = ("--registry", registry)
    return profiles.load(profile, overrides=overrides)


def _target(
    profile: str | None, host: str | None = None, registry: str | None = None, starts: bool = False
) -> config.Settings:
    """Validated settings for the profile, with the Docker engine checked reachable (and,
    for a command that `starts` containers, every app secret read before anything moves)."""
    settings = _load(profile, host, registry)
    if starts:
        appsecrets.values(settings)
    _bootstrap.check_docker(settings)
    targets.of(settings).check(settings)
    return settings


def _say_left_out(app) -> None:
    """The values of the app's compose file that Colorgate replaces or leaves out (on stderr)."""
    for line in _render.wiring(app):
        if line.startswith("!! "):
            runner.say(line)


def _report(record) -> None:
    if record.outcome == "no-op":
        return
    print(
        f"{record.action}: {record.from_color} {record.from_version} -> {record.to_color} {record.to_version}: "
        f"{record.outcome} in {record.duration_s:.1f}s"
    )
