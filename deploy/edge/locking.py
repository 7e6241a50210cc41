"""The release lock on the edge (its scripts: edge/ledger.py): taken by one command at a time,
beaten by a heartbeat while it runs, its phase kept current, broken only when stale; and
the record of an operation written under it (recorded: its intent first, then its outcome)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from deploy import edge
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, GateFailed, LockHeld
from deploy.release.history import Record, describe_phase, first_line, now, operator
from deploy.target import facts, runner

PAUSE_ENV = "COLORGATE_PAUSE_AT"  # tests only: stop (block) when a command reaches this phase


GIVE_UP_SECONDS = edge.STALE_SECONDS - 2 * edge.HEARTBEAT_SECONDS


class Heartbeat:
    """Beats for the lock held with `token`, from `after` seconds on, in a process that
    lives as long as this one (edge.HEARTBEAT_SECONDS). A command that ends sooner (a switch,
    a rollback) starts none: the lock's own mtime covers it, and a `docker exec` start
    would compete with the traffic for the CPU. Not runner.session: that waits for its
    process at the end, and this one sleeps between beats.

    A watchdog thread starts the beating process again whenever it ended (the edge was
    restarted, the connection dropped), through the longest step as between phases; when
    it cannot keep one running for `give_up` seconds (two beats short of the time after
    which others may break the lock; an edge that restarts is back well before), the lock
    is as good as lost: `on_lost` ends this command (SIGTERM:
    its clean-up runs) before another operator could take the lock beside it."""

    def __init__(
        self,
        command,
        env: dict[str, str],
        after: float = edge.HEARTBEAT_SECONDS,
        give_up: float = GIVE_UP_SECONDS,
        on_lost=None,
    ):
        # command(): the argument list, made afresh each start
        self.command, self.env, self.give_up = (
            command,
            env,
            give_up,
        )
        self.on_lost = on_lost or self._end_command
        self.guard = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.ended = threading.Event()
        self.watchdog = threading.Thread(
            target=self._watch, args=(after,), daemon=True, name="colorgate-heartbeat"
        )
        self.watchdog.start()

    @classmethod
    def of(cls, settings: Settings, token: str) -> Heartbeat:
        """The heartbeat in the edge's container as it is at each start (a Swarm may
        have replaced the edge's task meanwhile)."""
        return cls(
            lambda: [
                "docker",
                "exec",
                "-i",
                edge.edge_container(settings, fresh=True),
                "sh",
                "-c",
                edge.HEARTBEAT_SCRIPT,
                "heartbeat",
                token,
            ],
            runner.environ(settings.docker_env()),
        )

    def _watch(self, after: float) -> None:
        failing_since, wait = None, after
        while not self.ended.wait(wait):
            wait = min(edge.HEARTBEAT_SECONDS, self.give_up / 3)
            if self.beating():
                failing_since = None
            # it ended: started again below, unless that has not helped for too long
            elif self.proc is not None:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.give_up:
                    self.on_lost()
                    return
            self.revive()

    @staticmethod
    def _end_command() -> None:
        runner.say(
            f"!! the release lock's heartbeat could not be kept for {GIVE_UP_SECONDS} s (the edge unreachable? "
            "the lock broken?): ending this command before another operator may take the lock"
        )
        os.kill(os.getpid(), signal.SIGTERM)

    def revive(self) -> None:
        """Start beating, or again when the exec ended with the edge (restarted)."""
        with self.guard:
            if not self.ended.is_set() and (self.proc is None or self.proc.poll() is not None):
                try:
                    cmd = self.command()
                # the edge cannot be found now: the watchdog tries again
                except (
                    ColorgateError,
                    OSError,
                ):
                    return
                self.proc = subprocess.Popen(
                    cmd,
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )

    def beating(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def end(self) -> None:
        with self.guard:
            self.ended.set()
            if self.proc is not None:
                self.proc.stdin.close()
                self.proc.kill()  # not waiting out its sleep: the lock is gone, so it beats no more
                self.proc.wait()


@dataclass
class Held:
    """The release lock as its holder has it: what it read in the same exec as it took
    the lock (`found`), the lock --break-lock broke (`broken`: its holder died, so what
    it left needs a thorough look), and where the holder is."""

    settings: Settings
    token: str
    found: edge.Found
    broken: edge.LockState | None = None
    heartbeat: Heartbeat | None = None
    phase: str = ""  # as the lock says it


_held: list[Held] = []  # the lock this process holds


@functools.cache
def machine() -> str:
    """This machine and its boot, as a lock's holder names them beside its host name (which
    two machines may share): `MACHINE/BOOT`, digests of their ids, or "" where it has none."""
    ids = []
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            ids.append(hashlib.sha256(open(path).read().strip().encode()).hexdigest()[:16])
        except OSError:
            return ""
    return "/".join(ids)


def dead_here(found: edge.LockState) -> bool:
    """The lock's holder ran on this machine and is gone: its process ended, or the
    machine rebooted since. Known at once, with no waiting for its heartbeat to age."""
    holder, here = found.holder, machine()
    theirs = str(holder.get("machine") or "")
    if (
        not here
        or holder.get("host") != socket.gethostname()
        or theirs.split("/")[0] != here.split("/")[0]
    ):
        return False
    if theirs != here:
        return True  # rebooted since
    try:
        pid = int(holder.get("pid", 0))
        if pid > 0:
            os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, TypeError):
        pass
    return False


def held_message(found: edge.LockState) -> str:
    """One line for a command that finds the lock taken: busy, or stale (its holder died)."""
    phase = describe_phase(found.phase)
    who = edge.describe_holder(found.holder) + (f", at {phase}" if phase else "")
    if dead_here(found):
        return (
            f"the target's release lock is left by a run that died: {who}, whose process is gone from this machine: "
            "see `invoke status` and `invoke history`, then retry with --break-lock"
        )
    if found.stale:
        return (
            f"the target's release lock is stale: {who}, last heartbeat {found.age} s ago (did it die?): "
            "see `invoke status` and `invoke history`, then retry with --break-lock"
        )
    return f"the target is locked by {who}: wait for it to finish, or if it died, retry with --break-lock"


HOLDER_LABEL = (
    "org.colorgate.holder"  # on the one-off containers a command starts: its process_label
)


STAGE_ROLE = "stage"  # org.colorgate.role of access.stage_secrets' never-started container


def process_label(pid: int | None = None, host: str | None = None) -> str:
    """`pid@host` of this process (or of a lock's holder): the label of its one-off containers."""
    return f"{os.getpid() if pid is None else pid}@{socket.gethostname() if host is None else host}"


def _break(settings: Settings) -> edge.LockState | None:
    """--break-lock: remove the lock, close the record of the run that held it (it
    ended without one) and record the break. Returns the lock broken (None: it was free)."""
    found = edge.read_lock(settings)
    if found is None:
        runner.say("!! --break-lock: the lock was free")
        return None
    gone = dead_here(found)
    if not (found.stale or gone):
        raise LockHeld(
            f"the target is locked by {edge.describe_holder(found.holder)}, whose heartbeat is {found.age} s old: it is "
            f"running, and --break-lock breaks only a lock whose holder died (no heartbeat for {edge.STALE_SECONDS} s)"
        )
    try:  # only the lock read, and only if still stale: not one another operator took since
        edge.in_edge(settings, edge.break_lock_cmd(found.token, gone), "breaking the lock")
    except CommandError as exc:
        if exc.returncode == edge.LOCK_HELD:
            raise LockHeld(
                f"the release lock changed while breaking it: {held_message(edge.parse_lock(exc.stdout))}"
            ) from None
        raise
    who = edge.describe_holder(found.holder) + (f" at {found.phase}" if found.phase else "")
    runner.say(
        f"!! breaking the release lock of {who} (last heartbeat {found.age} s ago"
        + (": its process is gone" if gone else "")
        + ")"
    )
    live = edge.read_active(settings)
    where = f"{live.color} ({live.version})" if live else "no color"
    for dead in [r for r in edge.read_history(settings) if r.get("outcome") == "running"]:
        dead.update(
            outcome="interrupted",
            live_color=live.color if live else "",
            live_version=live.version if live else "",
            detail=f"ended without a record at {dead.get('phase') or found.phase or 'its start'} (killed?); "
            f"lock broken by {operator()}",
        )
        edge.append_history(settings, dead)
        runner.say(
            f"!! its {dead['action']} {dead['from_color']} -> {dead['to_color']} ({dead['to_version']}) ended "
            f"without a record; traffic is on {where}"
        )
    edge.append_history(
        settings,
        asdict(
            Record(
                "break-lock",
                "",
                "",
                "",
                "",
                outcome="broken",
                detail=f"{who}, last heartbeat {found.age} s ago",
            )
        ),
    )
    return found


@contextlib.contextmanager
def lock(
    settings: Settings, command: str, break_lock: bool = False, history: bool = False
) -> Iterator[Held]:
    """Hold the target's release lock for the duration, beating its heartbeat; refuse
    at once when taken (saying whether its holder still beats). Yields what the lock's
    exec read under it (with the history when asked) and the lock --break-lock broke."""
    broken = _break(settings) if break_lock else None
    token = secrets.token_hex(16)
    holder = json.dumps(
        {
            "command": command,
            "operator": operator(),
            "since": now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "machine": machine(),
        }
    )
    # (the one-off database containers a holder starts carry the same pid@host: see dbtools.tools_cmd, recover.reconcile)
    try:
        out = edge.in_edge(
            settings, edge.lock_cmd(holder, token, history), "taking the release lock"
        ).stdout
    except CommandError as exc:
        if exc.returncode == edge.LOCK_HELD:
            raise LockHeld(held_message(edge.parse_lock(exc.stdout))) from None
        raise facts.edge_down(settings) or exc from None
    held = Held(settings, token, edge.parse_found(out), broken, Heartbeat.of(settings, token))
    _held.append(held)
    edge.HELD[(settings.docker_host, settings.project)] = token
    try:
        yield held
    finally:
        _held.remove(held)
        edge.HELD.pop((settings.docker_host, settings.project), None)
        edge.in_edge(settings, edge.unlock_cmd(token), check=False)
        held.heartbeat.end()


def at(record: Record | None, phase: str) -> None:
    """The command reached `phase`: its record and its lock say so (another operator
    sees where it is; a run that dies leaves it behind)."""
    if record is not None:
        record.phase = phase
    if _held and _held[-1].phase != phase:
        held = _held[-1]
        if held.heartbeat.proc is not None and not held.heartbeat.beating():
            held.heartbeat.revive()  # its exec ended with the edge (restarted): beat again
        edge.in_edge(held.settings, edge.phase_cmd(held.token, phase), check=False)
        held.phase = phase
    # tests: the fault matrix kills a command here, or resumes it (SIGUSR1)
    if os.environ.get(PAUSE_ENV) == phase:
        resumed: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: resumed.append(signum))
        runner.say(f".. paused at {phase} ({PAUSE_ENV})")
        while not resumed:
            time.sleep(0.05)
        runner.say(f".. resumed at {phase}")


def settle(record: Record, exc: BaseException | None) -> None:
    """The outcome of a release that ended (with `exc`, or not): switched, refused (a
    gate failed before the switch), rolled back (set when traffic went back), failed,
    interrupted (a signal; at the phase it reached)."""
    if exc is None:
        if record.outcome == "running":
            record.outcome = "switched"
    elif isinstance(exc, GateFailed):
        if record.outcome == "running":
            record.outcome = "refused"
        record.detail = first_line(str(exc))
    elif isinstance(exc, KeyboardInterrupt):
        record.outcome = "interrupted"
        record.detail = f"interrupted at {record.phase or 'its start'} ({exc or 'SIGINT'})"
    else:
        if record.outcome != "rolled back":
            record.outcome = "failed"
        record.detail = first_line(str(exc)) or type(exc).__name__
        # its last lines, bounded (errors.py)
        record.output = exc.tail() if isinstance(exc, CommandError) else []


@contextlib.contextmanager
def recorded(settings: Settings, record: Record, phase: str = "") -> Iterator[Record]:
    """Record the intent on the target (and, under the lock, its first `phase`, in the
    same exec), run, settle the outcome, and record that under the same id with where
    traffic is then (read on the edge as it is written)."""
    started = time.monotonic()
    held = _held[-1] if _held else None
    if held and phase:
        # the intent: a run that dies leaves it "running"
        edge.append_history(settings, asdict(record), held.token, phase)
        held.phase = phase
    else:
        edge.append_history(settings, asdict(record))
    try:
        yield record
        settle(record, None)
    except (ColorgateError, KeyboardInterrupt) as exc:
        settle(record, exc)
        raise
    finally:
        record.duration_s = round(time.monotonic() - started, 2)
        record.live_color, record.live_version = edge.append_final(settings, asdict(record))
