"""Typed errors. The CLI edge (tasks.py) turns each into one line; no tracebacks."""

from __future__ import annotations

import re


class ColorgateError(Exception):
    """Base class: the message is the one line an operator sees (problem and fix)."""


class ConfigError(ColorgateError):
    """A setting is missing, malformed or a placeholder."""


class DockerUnavailable(ColorgateError):
    """The docker CLI is missing or the engine cannot be reached."""


class PortInUse(ColorgateError):
    """A port the edge must publish is already taken on the host."""


class StackError(ColorgateError):
    """The stack did not reach the expected state (unhealthy, exited, timed out)."""


class CommandError(ColorgateError):
    """A command exited non-zero. Carries the command, exit code, stdout and stderr."""

    def __init__(self, cmd: list[str], returncode: int, stdout: str, stderr: str, what: str = ""):
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.what = what or " ".join(cmd[:3])
        lines = (stderr.strip() or stdout.strip()).splitlines()
        # the line that says what went wrong, not the echo of a statement after it
        errors = [line for line in lines if re.search(r"\b(error|fatal)\b", line, re.IGNORECASE)]
        detail = (errors or lines or ["no output"])[-1].strip()
        super().__init__(f"{self.what} failed (exit {returncode}): {detail}")

    def tail(self, count: int = 30) -> list[str]:
        """The last `count` lines it printed (stdout, then stderr; masked by the runner),
        for a person to act on: a build's failing step, a migration's traceback."""
        return [line.rstrip() for line in f"{self.stdout}\n{self.stderr}".strip().splitlines() if line.strip()][-count:]


class ContractError(ConfigError):
    """The app's compose file or its x-colorgate block is unreadable or invalid."""


class UnknownColor(ColorgateError):
    """A color other than blue or green."""


class BadVersion(ColorgateError, ValueError):
    """A version tag that is not safe in image tags and nginx configuration."""


class UnknownBackup(ColorgateError):
    """No backup by that name on the target."""


class RegistryError(ColorgateError):
    """The registry refused a login, push or pull, or could not be reached."""


class LockHeld(ColorgateError):
    """Another release holds the target's lock."""


class GateFailed(ColorgateError):
    """A gate scenario failed: traffic did not move, or moved back."""


class MoveError(ColorgateError):
    """db.move cannot start, or failed (traffic stays on the old database)."""


class Interrupted(KeyboardInterrupt):
    """A signal ended the command (SIGTERM from a cancelled CI job, SIGHUP from a closed
    terminal; SIGINT stays Python's KeyboardInterrupt): the same clean-up as an error.
    The message is the signal's name."""
