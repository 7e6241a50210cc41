"""What stays open across commands: a shell kept open in a container (the edge's state is
read and written through one, a command a round trip), the Docker Engine API client per
host (reads without a `docker` process each), and forked runs of this process (the gates),
which open their own."""

from __future__ import annotations

import atexit
import functools
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping

from deploy.errors import CommandError, EngineLost, NotFound
from deploy.target.runner import environ, log, redact


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
                    # a signal ends the child at once; the parent cleans up
                    signal.signal(sig, signal.SIG_DFL)
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
                # the container went away since: once more on a new shell
                except (
                    BrokenPipeError,
                    OSError,
                ):
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


@functools.lru_cache(maxsize=8)
def _api(docker_host: str):
    import docker

    base = (
        environ({"DOCKER_HOST": docker_host} if docker_host else {}).get("DOCKER_HOST")
        or "unix:///var/run/docker.sock"
    )
    # ssh://: through the one connection
    return docker.APIClient(base_url=base, version="1.41", timeout=120)


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
