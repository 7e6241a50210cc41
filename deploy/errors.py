"""Typed errors. The CLI edge (deploy/cli) turns each into one line and its exit code; no
tracebacks. Each class owns its code; the README's "Exit codes" table lists them."""

from __future__ import annotations

import re

# The exit codes, one meaning each whatever the task (128+N: ended by signal N).
FAILED = 1  # a command, a build, a migration, a health check or a check did not succeed
BAD_INPUT = 2  # an option, a setting, the contract or a name given is wrong; nothing changed
REFUSED = 3  # the gates turned a release away before the switch: traffic stayed where it was
FLIPPED_BACK = 4  # traffic moved, its gates or the analysis failed after it, and it moved back
LOCKED = 5  # another release holds the target's lock (or left it stale)
UNREACHABLE = 6  # Docker is missing, or the engine or the SSH host does not answer
NOTHING_TO_DO = 7  # the version asked for is live already
BENCH_INVALID = 8  # a benchmark whose load client fell behind: no figures


class ColorgateError(Exception):
    """Base class: the message is the one line an operator sees (problem and fix)."""

    exit_code = FAILED


class BadInput(ColorgateError):
    """An option or a name given on the command line is wrong (nothing was changed)."""

    exit_code = BAD_INPUT


class ConfigError(BadInput):
    """A setting is missing, malformed or a placeholder."""


class DockerUnavailable(ColorgateError):
    """The docker CLI is missing, or the engine (on this machine or over SSH) cannot be reached."""

    exit_code = UNREACHABLE


class EngineLost(DockerUnavailable):
    """The engine could not be asked (its socket, or the SSH connection to it, gone or
    silent): nothing can be concluded about what runs there, so this is never read as
    "absent" (no `except CommandError` catches it)."""


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
        return [
            line.rstrip()
            for line in f"{self.stdout}\n{self.stderr}".strip().splitlines()
            if line.strip()
        ][-count:]


class NotFound(CommandError):
    """The engine answered that the object (container, image, network, secret) does not
    exist: absent, as a fact, apart from every other failure."""


class ContractError(ConfigError):
    """The app's compose file or its x-colorgate block is unreadable or invalid."""


class UnknownColor(BadInput):
    """A color other than blue or green."""


class BadVersion(BadInput, ValueError):
    """A version tag that is not safe in image tags and nginx configuration."""


class UnknownBackup(BadInput):
    """No backup by that name on the target."""


class RegistryError(ColorgateError):
    """The registry refused a login, push or pull, or could not be reached."""


class LockHeld(ColorgateError):
    """Another release holds the target's lock."""

    exit_code = LOCKED


class GateFailed(ColorgateError):
    """A gate scenario (or the canary's analysis) turned a release away before the switch:
    traffic did not move."""

    exit_code = REFUSED


class FlippedBack(GateFailed):
    """Gates or the analysis failed after the switch, and traffic moved back."""

    exit_code = FLIPPED_BACK


class NothingToDo(ColorgateError):
    """The version asked for is live already (--force deploys it again)."""

    exit_code = NOTHING_TO_DO


class MoveError(ColorgateError):
    """db.move cannot start, or failed (traffic stays on the old database)."""


class Interrupted(KeyboardInterrupt):
    """A signal ended the command (SIGTERM from a cancelled CI job, SIGHUP from a closed
    terminal; SIGINT stays Python's KeyboardInterrupt): the same clean-up as an error.
    The message is the signal's name."""
