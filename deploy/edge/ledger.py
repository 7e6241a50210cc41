"""The release lock and the history, in the edge's state directory: taken, beaten,
read and broken with one exec each (see deploy/edge/__init__.py for the files)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

from deploy.colors import COLORS
from deploy.config import Settings
from deploy.edge.modes import _database_record
from deploy.edge.state import (
    DATABASE_RECORD,
    FREEZE_FILE,
    LIVE_FILE,
    LOCK_DIR,
    ROUTES_FILE,
    STATE_DIR,
    Active,
    _sections,
    in_edge,
    live_of,
    read_file_cmd,
    state_fields,
)
from deploy.errors import CommandError
from deploy.target import facts

# --- the release lock and the history -------------------------------------------------


HISTORY = f"{STATE_DIR}/history.jsonl"
LOCK_HELD = 75
HEARTBEAT_SECONDS = 5  # the holder touches lock/heartbeat this often
STALE_SECONDS = 30  # a lock whose heartbeat is older than this lost its holder

# The lock is a directory (mkdir is atomic): `holder` (JSON, shown to others), `token`
# (the holder's random secret: only it unlocks), `heartbeat` (touched while the holder
# lives), `phase` (where the holder is). Taken: print holder, heartbeat age and phase.
_LOCK_REPORT = f"""  printf '%s\\n' "$(cat $L/holder 2>/dev/null)"
  beat=$(stat -c %Y $L/heartbeat 2>/dev/null || stat -c %Y $L 2>/dev/null || date +%s)
  echo "age=$(( $(date +%s) - beat ))"
  echo "phase=$(cat $L/phase 2>/dev/null)"
  echo "token=$(cat $L/token 2>/dev/null)"
  exit {LOCK_HELD}"""
# Taken, the lock's exec also prints what a locked command decides from, read under the
# lock in the same round trip: the live file, whether writes are frozen, the database
# record, whether a canary is set, the routes' first line and (with $3 = history) the history, each after a
# `@@colorgate NAME` line.
LOCK_SCRIPT = f"""L={LOCK_DIR}
if ! mkdir $L 2>/dev/null; then
{_LOCK_REPORT}
fi
printf '%s' "$2" > $L/token
printf '%s' "$1" > $L/holder
touch $L/heartbeat
printf '\\n@@colorgate live\\n'; cat {LIVE_FILE} 2>/dev/null
printf '\\n@@colorgate freeze\\n'; [ ! -f {FREEZE_FILE} ] || echo frozen
printf '\\n@@colorgate database\\n'; cat {DATABASE_RECORD} 2>/dev/null
printf '\\n@@colorgate canary\\n'; [ ! -f {STATE_DIR}/canary ] || echo canary
printf '\\n@@colorgate routes\\n'; head -n 1 {ROUTES_FILE} 2>/dev/null || true
if [ "${{3:-}}" = history ]; then printf '\\n@@colorgate history\\n'; cat {HISTORY} 2>/dev/null; fi
true"""
READ_LOCK_SCRIPT = f"""L={LOCK_DIR}
if [ -d $L ]; then
{_LOCK_REPORT}
fi"""
# --break-lock removes only the lock it read ($1: its token) and only while that is stale
# (or $2 = dead: its holder's process is known gone), in one exec: two operators breaking
# the same stale lock cannot remove each other's new one. Otherwise: the lock as it is now.
BREAK_SCRIPT = f"""L={LOCK_DIR}
[ -d $L ] || exit 0
beat=$(stat -c %Y $L/heartbeat 2>/dev/null || stat -c %Y $L 2>/dev/null || date +%s)
if [ "$(cat $L/token 2>/dev/null)" != "$1" ] || {{ [ "$2" != dead ] && [ $(( $(date +%s) - beat )) -le {STALE_SECONDS} ]; }}; then
{_LOCK_REPORT}
fi
rm -rf $L"""
# Only the token's holder unlocks: a run whose stale lock was broken must not remove
# the lock of the run that broke it.
UNLOCK_SCRIPT = f"""[ "$(cat {LOCK_DIR}/token 2>/dev/null)" = "$1" ] || exit 0
rm -rf {LOCK_DIR}"""
# Runs (one docker exec) as long as its holder does: its stdin is a pipe from the
# holder, so when the holder dies, `cat` ends and the beats stop; a broken lock (another
# token) stops them too.
HEARTBEAT_SCRIPT = f"""exec 3<&0
cat <&3 > /dev/null & c=$!
while kill -0 $c 2>/dev/null && [ "$(cat {LOCK_DIR}/token 2>/dev/null)" = "$1" ]; do
  touch {LOCK_DIR}/heartbeat
  sleep {HEARTBEAT_SECONDS}
done
kill $c 2>/dev/null || true"""
PHASE_SCRIPT = f"""[ "$(cat {LOCK_DIR}/token 2>/dev/null)" = "$1" ] && printf '%s' "$2" > {LOCK_DIR}/phase || true"""


@dataclass(frozen=True)
class Found:
    """What the lock's exec read under the lock (LOCK_SCRIPT): the facts a locked
    command starts from, in one round trip instead of one each. The files are parsed
    when asked for (a damaged one stops only a command that reads it)."""

    live: str = ""  # the live file's text
    frozen: bool = False
    database_text: str = ""
    history: list[dict] | None = None  # None: not asked for
    canary: bool = False  # a canary file is there (canary.py)
    routes: str = ""  # the first line of the edge's routes file (names their digest)

    @property
    def active(self) -> Active | None:
        return live_of(self.live)

    @property
    def database(self) -> dict:
        """The database record ({"url": "local"} until db.move)."""
        return _database_record(self.database_text)


def parse_found(text: str) -> Found:
    body = _sections(text)
    return Found(
        body.get("live", ""),
        body.get("freeze", "").strip() == "frozen",
        body.get("database", ""),
        parse_history(body["history"]) if "history" in body else None,
        body.get("canary", "").strip() == "canary",
        body.get("routes", "").strip(),
    )


@dataclass(frozen=True)
class LockState:
    """A taken lock as another command sees it."""

    holder: dict  # command, operator, since, pid, host, machine ({} when unreadable)
    age: int  # seconds since its holder's last heartbeat
    phase: str  # where the holder was then ("" before its first step)
    # what --break-lock names to remove this lock and no other
    token: str = field(default="", repr=False, compare=False)

    @property
    def stale(self) -> bool:
        return self.age > STALE_SECONDS


def describe_holder(holder: dict) -> str:
    """`deploy by ana@laptop since 2026-11-27T10:00:00+00:00 (pid 42 on laptop)`."""
    try:
        return f"{holder['command']} by {holder['operator']} since {holder['since']} (pid {holder['pid']} on {holder['host']})"
    except (KeyError, TypeError):
        return "an unknown holder (unreadable lock file)"


def parse_lock(text: str) -> LockState:
    """The lock script's answer when the lock is taken: holder JSON, `age=`, `phase=`."""
    lines = (text or "").splitlines()
    try:
        holder = json.loads(lines[0]) if lines else {}
    except ValueError:
        holder = {}
    values = state_fields("\n".join(lines[1:]))
    age = values.get("age", "")
    return LockState(
        holder if isinstance(holder, dict) else {},
        int(age) if age.lstrip("-").isdigit() else 0,
        values.get("phase", ""),
        values.get("token", ""),
    )


def lock_cmd(holder: str, token: str, history: bool = False) -> list[str]:
    """Take the lock for `holder` (JSON) with `token` and print what parse_found reads
    (with the history when asked); exit 75 printing who holds it. Inside the edge."""
    return ["sh", "-c", LOCK_SCRIPT, "lock", holder, token, "history" if history else ""]


def unlock_cmd(token: str) -> list[str]:
    return ["sh", "-c", UNLOCK_SCRIPT, "unlock", token]


def break_lock_cmd(token: str, dead: bool = False) -> list[str]:
    return ["sh", "-c", BREAK_SCRIPT, "break", token, "dead" if dead else ""]


def phase_cmd(token: str, phase: str) -> list[str]:
    return ["sh", "-c", PHASE_SCRIPT, "phase", token, phase]


def read_lock(settings: Settings) -> LockState | None:
    """The lock as another command sees it; None when nobody holds it."""
    proc = in_edge(
        settings, ["sh", "-c", READ_LOCK_SCRIPT], "reading the release lock", check=False
    )
    return parse_lock(proc.stdout) if proc.returncode == LOCK_HELD else None


def read_lock_holder(settings: Settings) -> dict:
    """Who holds the release lock ({} when nobody, or the holder file is unreadable)."""
    found = read_lock(settings)
    return found.holder if found else {}


# Append a record ($1, one JSON line) and, when $2 (a token) holds the lock, set its
# phase to $3: a release's intent and its first phase in one exec.
APPEND_SCRIPT = f"""printf '%s\\n' "$1" >> {HISTORY}
[ -z "$2" ] || [ "$(cat {LOCK_DIR}/token 2>/dev/null)" != "$2" ] || printf '%s' "$3" > {LOCK_DIR}/phase"""
LIVE_MARK = "@live"  # in a final record: where traffic is, filled in on the edge (FINAL_SCRIPT)
# A record's outcome, with where traffic is then, read from the live file in the same
# exec: its `"live_color": "@live"` and `"live_version": "@live"` get the live file's
# values (only if they are a color and a version tag), and the live file is printed.
FINAL_SCRIPT = f"""c=$(sed -n 's/^color=//p' {LIVE_FILE} 2>/dev/null); v=$(sed -n 's/^version=//p' {LIVE_FILE} 2>/dev/null)
case "$c" in {"|".join(COLORS)}) ;; *) c= ;; esac
case "$v" in ''|*[!A-Za-z0-9._-]*) v= ;; esac
printf '%s\\n' "$1" | sed "s/\\"live_color\\": \\"{LIVE_MARK}\\"/\\"live_color\\": \\"$c\\"/; s/\\"live_version\\": \\"{LIVE_MARK}\\"/\\"live_version\\": \\"$v\\"/" >> {HISTORY}
printf 'color=%s\\nversion=%s\\n' "$c" "$v"
"""


def append_history_cmd(record: dict, token: str = "", phase: str = "") -> list[str]:
    return ["sh", "-c", APPEND_SCRIPT, "history", json.dumps(record), token, phase]


def append_history(settings: Settings, record: dict, token: str = "", phase: str = "") -> None:
    """Append `record`; with the lock's `token`, also say the holder is at `phase`."""
    in_edge(settings, append_history_cmd(record, token, phase), "recording history")


def final_history_cmd(record: dict) -> list[str]:
    return [
        "sh",
        "-c",
        FINAL_SCRIPT,
        "history",
        json.dumps({**record, "live_color": LIVE_MARK, "live_version": LIVE_MARK}),
    ]


def append_final(settings: Settings, record: dict) -> tuple[str, str]:
    """Append a release's outcome with where traffic is now (read on the edge in the
    same exec); returns that (color, version), ("", "") when no color is live."""
    values = state_fields(in_edge(settings, final_history_cmd(record), "recording history").stdout)
    return values.get("color", ""), values.get("version", "")


def parse_history(text: str) -> list[dict]:
    """Records, oldest first; lines that are not JSON objects are skipped. A record
    written again under its `id` (its intent, then its outcome) is its last line, in the
    place of its first."""
    out: list[dict] = []
    where: dict[str, int] = {}
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if not isinstance(item, dict):
                continue
            key = item.get("id")
            if key and key in where:
                out[where[key]] = item
                continue
            if key:
                where[key] = len(out)
            out.append(item)
    return out


def read_history(settings: Settings) -> list[dict]:
    try:
        out = in_edge(settings, read_file_cmd(HISTORY), "reading history").stdout
    except CommandError as exc:
        raise facts.edge_down(settings) or exc from None
    return parse_history(out)
