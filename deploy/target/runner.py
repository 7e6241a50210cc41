"""The one place commands run: logged (exact command, secrets masked), timed, and
turned into CommandError when they fail. Also the progress lines operators see.

Functions elsewhere in deploy/ build commands as `list[str]`; only this module
executes them: as processes (`run`, `pipe`, `session`); what stays open across commands
is connections.py's (reads of containers through the Docker Engine API on one connection,
`engine`; commands in the edge through one shell kept open there, `shell`, since the gates
and every release make many of them and each docker CLI process or exec costs ~100 ms of a
small machine; the gates in a fork of this process, `forked`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from deploy.errors import CommandError, Interrupted, NotFound
from deploy.target import ssh

log = logging.getLogger("colorgate")
_secrets: set[str] = set()
MASK = "********"
ABSENT = re.compile(
    r"^(Error( response from daemon)?: )?No such (container|object|image|network|volume|service|secret)\b",
    re.M,
)


def add_secret(value: str) -> None:
    """Mask `value` wherever this module prints or logs text (and in CommandError)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def holds_secret(text: str) -> bool:
    """Whether `text` contains a secret this process knows (the settings' passwords, URLs)."""
    return any(secret in text for secret in _secrets)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


# What a progress line's prefix says, in colour on a terminal: a step begins, ends
# well, fails; a warning.
PREFIX_STYLES = {"-> ": "cyan", "ok ": "green", "xx ": "bold red", "!! ": "yellow"}


@functools.cache
def _terminal():
    """rich's console on stderr where it shows colour: a terminal (or FORCE_COLOR), and
    neither NO_COLOR nor TERM=dumb; None where lines stay plain (piped, CI logs: rich,
    a tenth of a second to import, is not even loaded there)."""
    if (
        os.environ.get("NO_COLOR")
        or os.environ.get("TERM") == "dumb"
        or not (sys.stderr.isatty() or os.environ.get("FORCE_COLOR"))
    ):
        return None
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    return (
        console if console.is_terminal and not console.no_color and console.color_system else None
    )


def say(message: str) -> None:
    """A progress line for the operator (stderr, so --json output stays clean)."""
    text = redact(message)
    style = PREFIX_STYLES.get(text[:3])
    console = _terminal() if style else None
    if console is None:
        print(text, file=sys.stderr, flush=True)
    else:
        from rich.text import Text

        console.print(Text.assemble((text[:3], style), text[3:]))


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Announce a long step, then report how long it took and whether it worked."""
    say(f"-> {label} ...")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"xx {label} failed after {time.monotonic() - started:.1f}s")
        raise
    say(f"ok {label} ({time.monotonic() - started:.1f}s)")


def environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus `env`. A DOCKER_HOST of ssh:// becomes this process's one
    connection to that host (deploy.target.ssh.Tunnel), opened on first use."""
    full = {**os.environ, **(env or {})}
    if full.get("DOCKER_HOST", "").startswith("ssh://"):
        full["DOCKER_HOST"] = ssh.docker_host(
            full["DOCKER_HOST"], full.get("COLORGATE_SSH_PERSIST")
        )
    return full


def run(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = None,
    what: str = "",
    check: bool = True,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (an argument list, never a shell string) with `env` added to ours.

    capture=False lets output through to the terminal (logs, interactive use).
    Raises CommandError on a non-zero exit when `check`, with secrets masked.
    """
    full_env = environ(env)
    log.debug("$ %s", redact(shlex.join(cmd)))
    started = time.monotonic()
    pipe = subprocess.PIPE if capture else None
    # captured docker commands run in a process group of their own, ended as a whole:
    # `docker compose` is the docker CLI running the compose plugin as its child, and
    # killing the CLI alone leaves the plugin going on by itself (creating, starting a
    # container after this command gave up on it). They never read the terminal (a
    # background group that did would be stopped); every other command stays in the
    # terminal's group, where ssh may ask for a password or a host key.
    group = capture and Path(cmd[0]).name == "docker"
    try:
        child = subprocess.Popen(
            cmd,
            env=full_env,
            text=True,
            stdin=subprocess.PIPE if input is not None else (subprocess.DEVNULL if group else None),
            stdout=pipe,
            stderr=pipe,
            process_group=0 if group else None,
        )
    except FileNotFoundError as exc:
        raise CommandError(cmd, 127, "", f"{cmd[0]}: command not found", what) from exc
    try:
        out, err = child.communicate(input, timeout=timeout)
    except BaseException as exc:  # timed out, interrupted: nothing it started outlives it
        _end(child, group)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise CommandError(cmd, 124, "", f"timed out after {timeout:.0f}s", what) from exc
        raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    log.debug("  exit %s in %.2fs", proc.returncode, time.monotonic() - started)
    if check and proc.returncode != 0:
        # the docker CLI's word for it
        absent = Path(cmd[0]).name == "docker" and ABSENT.search(proc.stderr or "")
        raise (NotFound if absent else CommandError)(
            cmd, proc.returncode, redact(proc.stdout or ""), redact(proc.stderr or ""), what
        )
    return proc


def _end(child: subprocess.Popen, group: bool) -> None:
    """Kill `child` with its whole process group (SIGKILL: none of them runs another
    instruction), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL) if group else child.kill()
    child.wait()


def pipe(
    first: list[str],
    second: list[str],
    *,
    first_env: Mapping[str, str] | None = None,
    second_env: Mapping[str, str] | None = None,
    what: str = "",
    timeout: float | None = None,
) -> str:
    """`first | second` without a shell; both must succeed. Returns second's stdout."""
    log.debug("$ %s | %s", redact(shlex.join(first)), redact(shlex.join(second)))
    producer = subprocess.Popen(
        first, env=environ(first_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        consumer = subprocess.run(
            second,
            env=environ(second_env),
            stdin=producer.stdout,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    finally:
        producer.stdout.close()
        producer_err = producer.stderr.read().decode(errors="replace")
        producer.wait()
    for cmd, code, out, err in (
        (first, producer.returncode, "", producer_err),
        (
            second,
            consumer.returncode,
            consumer.stdout.decode(errors="replace"),
            consumer.stderr.decode(errors="replace"),
        ),
    ):
        if code != 0:
            raise CommandError(cmd, code, redact(out), redact(err), what)
    return consumer.stdout.decode(errors="replace")


@contextlib.contextmanager
def session(cmd: list[str], *, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A long-running command we talk to over stdin/stdout (a psql session holding a
    snapshot open, say). Logged like `run`; ended when the block exits."""
    log.debug("$ %s (session)", redact(shlex.join(cmd)))
    proc = subprocess.Popen(
        cmd,
        env=environ(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        yield proc
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def on_signals() -> None:
    """End this command on SIGTERM or SIGHUP as on Ctrl-C (Interrupted, a
    KeyboardInterrupt): every `finally` and clean-up runs, and the history says where it
    stopped. A second signal during that clean-up is ignored, said, not obeyed."""

    def cleaning(signum, frame):
        say(
            f"!! {signal.Signals(signum).name}: still cleaning up (kill -9 {os.getpid()} abandons it)"
        )

    def interrupt(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, cleaning)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, interrupt)
