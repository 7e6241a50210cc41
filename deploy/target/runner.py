"""The one place commands run: logged (exact command, secrets masked), timed, and
turned into CommandError when they fail. Also the progress lines operators see.

Functions elsewhere in deploy/ build commands as `list[str]`; only this module
executes them: as processes (`run`); reads of containers through the Docker Engine API
on one connection (`engine`); commands in the edge through one shell kept
open there (`shell`), since the gates and every release make many of them and each
docker CLI process or exec costs ~100 ms of a small machine; the gates in a fork of
this process (`forked`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from deploy.target import ssh
from deploy.errors import CommandError, EngineLost, Interrupted, NotFound

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
        absent = Path(cmd[0]).name == "docker" and ABSENT.search(
            proc.stderr or ""
        )  # the docker CLI's word for it
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


def forked(
    fn, *, env: Mapping[str, str] | None = None, timeout: float = 600, what: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run `fn()` (returning an exit code) in a forked copy of this process, with `env`
    added to its environment and its output captured: what this process imported is
    already loaded there (a warm interpreter), and nothing `fn` changes comes back.
    Where os.fork is missing, callers run a process of their own instead."""
    with tempfile.TemporaryFile() as out:
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                    signal.signal(
                        sig, signal.SIG_DFL
                    )  # a signal ends the child at once; the parent cleans up
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                os.environ.update(env or {})
                _api.cache_clear()  # its own engine connections (the parent waits meanwhile, so the
                # kept-open shells may serve the child too: each answer is framed by its own marker)
                code = int(fn() or 0)
            except BaseException:  # noqa: BLE001 - reported through the exit code and the output
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() - started > timeout:
                    raise CommandError(
                        [what or "forked"], 124, "", f"timed out after {timeout:.0f}s", what
                    )
                time.sleep(0.005)
        except BaseException:  # timed out, or interrupted: the child does not outlive its wait
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        out.seek(0)
        text = redact(out.read().decode(errors="replace"))
    code = os.waitstatus_to_exitcode(status)
    log.debug("forked %s: exit %s in %.2fs", what, code, time.monotonic() - started)
    return subprocess.CompletedProcess([what], code, text, "")


# --- a shell kept open in a container: many small commands, one docker exec ----------


class Shell:
    """`docker exec -i CONTAINER sh`, kept open: each command runs in it in a few
    milliseconds instead of a new exec each (~100 ms of the engine's time, more over
    SSH). Its output goes to files in the container and comes back framed by a random
    marker with its exit code and sizes, so any output is read back exactly."""

    def __init__(self, docker_host: str, container: str):
        self.docker_host, self.container = docker_host, container
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = environ({"DOCKER_HOST": self.docker_host} if self.docker_host else {})
        log.debug("$ docker exec -i %s sh (kept open)", self.container)
        return subprocess.Popen(
            ["docker", "exec", "-i", self.container, "sh"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )

    def run(
        self, cmd: list[str], *, what: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        shown = ["docker", "exec", self.container, *cmd]
        marker = secrets.token_hex(8)
        script = (
            f"{shlex.join(cmd)} </dev/null >/tmp/.cg-$$.out 2>/tmp/.cg-$$.err; rc=$?; "
            f"printf '\\n{marker} %d %d %d\\n' $rc $(wc -c </tmp/.cg-$$.out) $(wc -c </tmp/.cg-$$.err); "
            "cat /tmp/.cg-$$.out /tmp/.cg-$$.err\n"
        )
        started = time.monotonic()
        with self.lock:
            for attempt in (1, 2):
                if self.proc is None or self.proc.poll() is not None:
                    self.proc = self._start()
                try:
                    self.proc.stdin.write(script.encode())
                    break
                except (
                    BrokenPipeError,
                    OSError,
                ):  # the container went away since: once more on a new shell
                    self.proc = None
                    if attempt == 2:
                        raise CommandError(
                            shown, 125, "", f"the shell in {self.container} ended", what
                        ) from None
            result = self._read(marker)
        if result is None:
            err = (
                self.proc.stderr.read().decode(errors="replace")
                if self.proc.poll() is not None
                else ""
            )
            self.proc = None
            proc = subprocess.CompletedProcess(
                shown, 125, "", err.strip() or f"the shell in {self.container} ended"
            )
        else:
            proc = subprocess.CompletedProcess(shown, *result)
        log.debug(
            "$ %s (kept-open shell): exit %s in %.3fs",
            redact(shlex.join(shown)),
            proc.returncode,
            time.monotonic() - started,
        )
        if check and proc.returncode != 0:
            raise CommandError(
                shown, proc.returncode, redact(proc.stdout), redact(proc.stderr), what
            )
        return proc

    def _read(self, marker: str) -> tuple[int, str, str] | None:
        out = self.proc.stdout
        line = b""
        while True:
            line = out.readline() if hasattr(out, "readline") else b""
            if not line:
                return None
            if line.startswith(marker.encode()):
                break
        _, rc, n_out, n_err = line.decode().split()
        body = b""
        want = int(n_out) + int(n_err)
        while len(body) < want:
            chunk = out.read(want - len(body))
            if not chunk:
                return None
            body += chunk
        return (
            int(rc),
            body[: int(n_out)].decode(errors="replace"),
            body[int(n_out) :].decode(errors="replace"),
        )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_shells: dict[tuple[str, str], Shell] = {}


def shell(docker_host: str, container: str) -> Shell:
    """The kept-open shell in `container` on that engine (one per process)."""
    key = (docker_host, container)
    if key not in _shells:
        _shells[key] = Shell(docker_host, container)
    return _shells[key]


@atexit.register
def _close_shells() -> None:
    for sh in _shells.values():
        sh.close()


# --- the Docker Engine API: reads of the target without a CLI process each ------------


@functools.lru_cache(maxsize=8)
def _api(docker_host: str):
    import docker

    base = (
        environ({"DOCKER_HOST": docker_host} if docker_host else {}).get("DOCKER_HOST")
        or "unix:///var/run/docker.sock"
    )
    return docker.APIClient(
        base_url=base, version="1.41", timeout=120
    )  # ssh://: through the one connection


def engine(docker_host: str, call, *args, what: str = "", **kwargs):
    """`call` (a docker.APIClient method name) on the target's engine, one kept-open
    connection per engine. Errors become CommandError, worded as the CLI would: NotFound
    when the object does not exist, EngineLost when the engine could not be asked."""
    import docker.errors
    import requests.exceptions

    log.debug("api %s %s", call, redact(" ".join(map(str, args))))
    try:
        return getattr(_api(docker_host), call)(*args, **kwargs)
    except docker.errors.NotFound as exc:
        raise NotFound(
            ["docker", call, *map(str, args)],
            1,
            "",
            redact(f"Error: No such object: {exc.explanation or exc}"),
            what,
        ) from None
    except (
        docker.errors.DockerException
    ) as exc:  # the engine's answer (an APIError is a requests error too)
        detail = getattr(exc, "explanation", None) or str(exc)
        raise CommandError(
            ["docker", call, *map(str, args)],
            1,
            "",
            redact(f"Error response from daemon: {detail}"),
            what,
        ) from None
    except (
        requests.exceptions.RequestException
    ) as exc:  # no answer: its socket or SSH connection gone, or silent
        reason = (
            "no answer in 120 s"
            if isinstance(exc, requests.exceptions.Timeout)
            else "the connection failed or was lost"
        )
        raise EngineLost(
            f"cannot ask the Docker engine ({docker_host or 'this machine'}) while {what or call}: {reason}; "
            "check that it runs (and the SSH host answers), then run the command again"
        ) from None
