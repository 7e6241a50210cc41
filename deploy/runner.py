"""The one place commands run: logged (exact command, secrets masked), timed, and
turned into CommandError when they fail. Also the progress lines operators see.

Functions elsewhere in deploy/ build commands as `list[str]`; only this module
executes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

from deploy.errors import CommandError

log = logging.getLogger("colorgate")
_secrets: set[str] = set()
MASK = "********"


def add_secret(value: str) -> None:
    """Mask `value` wherever this module prints or logs text (and in CommandError)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def say(message: str) -> None:
    """A progress line for the operator (stderr, so --json output stays clean)."""
    print(redact(message), file=sys.stderr, flush=True)


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
    full_env = {**os.environ, **(env or {})}
    log.debug("$ %s", redact(shlex.join(cmd)))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            env=full_env,
            input=input,
            text=True,
            capture_output=capture,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(cmd, 127, "", f"{cmd[0]}: command not found", what) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(cmd, 124, "", f"timed out after {timeout:.0f}s", what) from exc
    log.debug("  exit %s in %.2fs", proc.returncode, time.monotonic() - started)
    if check and proc.returncode != 0:
        raise CommandError(
            cmd, proc.returncode, redact(proc.stdout or ""), redact(proc.stderr or ""), what
        )
    return proc


def pipe(first: list[str], second: list[str], *, first_env: Mapping[str, str] | None = None,
         second_env: Mapping[str, str] | None = None, what: str = "", timeout: float | None = None) -> str:
    """`first | second` without a shell; both must succeed. Returns second's stdout."""
    log.debug("$ %s | %s", redact(shlex.join(first)), redact(shlex.join(second)))
    producer = subprocess.Popen(first, env={**os.environ, **(first_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        consumer = subprocess.run(second, env={**os.environ, **(second_env or {})}, stdin=producer.stdout,
                                  capture_output=True, timeout=timeout, check=False)
    finally:
        producer.stdout.close()
        producer_err = producer.stderr.read().decode(errors="replace")
        producer.wait()
    for cmd, code, out, err in ((first, producer.returncode, "", producer_err),
                                (second, consumer.returncode, consumer.stdout.decode(errors="replace"),
                                 consumer.stderr.decode(errors="replace"))):
        if code != 0:
            raise CommandError(cmd, code, redact(out), redact(err), what)
    return consumer.stdout.decode(errors="replace")


@contextlib.contextmanager
def session(cmd: list[str], *, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A long-running command we talk to over stdin/stdout (a psql session holding a
    snapshot open, say). Logged like `run`; ended when the block exits."""
    log.debug("$ %s (session)", redact(shlex.join(cmd)))
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, bufsize=1,
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
