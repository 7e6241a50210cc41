"""The edge's state: the one module that reads and writes the files in its state
directory (`/etc/colorgate/state`, the `edge-state` volume), all through Docker.

    live            which color (and version) is live: `color=..`, `version=..` lines,
                    read by the edge on every request (compose/edge/colorgate.lua), so a
                    switch is one validated atomic rename and no reload
    freeze          present only during a write freeze (db.move): `hold=SECONDS`; writes
                    are held that long, then passed on or answered 503
    database.json   where the app's database is (written by db.move, retire-local)
    lock/           the release lock (mkdir): holder JSON, token, heartbeat, phase
    history.jsonl   every release, one JSON record a line: its intent when it starts,
                    then its outcome (the same `id`; the last line of an id wins)

The live color is read from the edge itself, never from a file on the operator's
machine. Rendering and parsing are pure; the commands that read and change the edge
are returned as argument lists for deploy.runner.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass

from deploy import facts, runner
from deploy.colors import COLORS, parse_color
from deploy.config import Settings
from deploy.errors import BadVersion, ColorgateError, CommandError, StackError

STATE_DIR = "/etc/colorgate/state"
LIVE_FILE = f"{STATE_DIR}/live"
FREEZE_FILE = f"{STATE_DIR}/freeze"
MAINTENANCE_FILE = f"{STATE_DIR}/maintenance"
DATABASE_RECORD = f"{STATE_DIR}/database.json"
# What the edge routes now and its requests in flight per color (colorgate.lua),
# answered only inside the container.
STATE_URL = "http://127.0.0.1:8080/.colorgate/state"

NGINX_CONF = "/etc/colorgate/nginx.conf"
VERSION_RE = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
VERSION = re.compile(f"^{VERSION_RE}$")
# Every line of a state file must match its pattern (checked again on the edge, so a
# file that did not come from here is refused before it is renamed into place).
LIVE_LINES = f"#.*|color=({'|'.join(COLORS)})|version={VERSION_RE}"
FREEZE_LINES = r"#.*|hold=[0-9]+(\.[0-9]+)?"
# A maintenance message goes into an HTML page and a JSON string as it is: no markup,
# quotes, backslashes or control characters, at most 300 characters.
MESSAGE = re.compile(r'[^\x00-\x1f\x7f<>&"\\]{0,300}')
MAINTENANCE_LINES = r'#.*|retry=[0-9]+|since=[0-9TZ:+.-]+|bypass=[0-9a-f]+|message=[^<>&"\\]*'

# Validate and install a state file in one exec: the new text is $5 (empty removes
# the file at $1); every line must match $2 and each key in $3 must be there, or the
# file is refused (exit 3) and the old one stays. Then wait until the edge's state
# endpoint answers with the line $4: the edge reads the file per request, so that is
# the next request.
WRITE_SCRIPT = f"""set -eu
f=$1
printf '%s' "$5" > "$f.new"
if [ ! -s "$f.new" ]; then
  rm -f "$f.new" "$f"
else
  bad=$(grep -vxE "$2" "$f.new" | head -n 1 || true)
  if [ -n "$bad" ]; then rm -f "$f.new"; echo "refused $f: the line '$bad' is not valid there" >&2; exit 3; fi
  for key in $3; do
    grep -q "^$key=" "$f.new" || {{ rm -f "$f.new"; echo "refused $f: it has no '$key=' line" >&2; exit 3; }}
  done
  mv "$f.new" "$f"
fi
want=${{4:-}}
[ -n "$want" ] || exit 0
tries=0
until curl -s --max-time 1 {STATE_URL} | grep -qx "$want"; do
  tries=$((tries + 1))
  [ $tries -lt 100 ] || {{ echo "the edge does not answer '$want' after 2 s: see: invoke logs edge" >&2; exit 4; }}
  sleep 0.02
done
"""

@dataclass(frozen=True)
class Active:
    color: str
    version: str


def check_version(version: str) -> str:
    """A version tag safe in image tags and state files, or BadVersion."""
    if not VERSION.fullmatch(version or ""):
        raise BadVersion(f"bad version {version!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return version


def render_live(color: str, version: str) -> str:
    """The state file that makes `color` (running `version`) the live color."""
    color = parse_color(color)
    check_version(version)
    return f"# Managed by Colorgate: the live color, read by the edge on every request.\ncolor={color}\nversion={version}\n"


def render_freeze(hold_seconds: float) -> str:
    return f"# Managed by Colorgate: a write freeze (db.move); writes are held this long, then 503.\nhold={hold_seconds:g}\n"


def render_maintenance(message: str, retry: int, since: str, bypass: str) -> str:
    if not MESSAGE.fullmatch(message):
        raise ColorgateError("the maintenance message must be one line of at most 300 characters without < > & \" or \\")
    return (f"# Managed by Colorgate: maintenance mode; every route answers 503 with this message.\n"
            f"retry={retry}\nsince={since}\nbypass={bypass}\nmessage={message}\n")


def state_fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (text or "").splitlines() if "=" in line and not line.startswith("#"))


def parse_active(text: str) -> Active | None:
    """Which color a live file routes to; None when no color is live (no file).

    Raises ValueError when the file names no known color (edited by hand?).
    """
    values = state_fields(text)
    if not values:
        return None
    color = values.get("color", "")
    if color not in COLORS:
        raise ValueError(f"the live file names color {color!r}, expected one of {', '.join(COLORS)}")
    version = values.get("version", "")
    if not VERSION.fullmatch(version):
        raise ValueError(f"the live file names version {version!r}, which is not a version tag")
    return Active(color, version)


def parse_state(text: str) -> dict[str, str]:
    """The edge's state endpoint: color, version, writes, inflight_<color>, inflight_writes."""
    return state_fields(text)


def edge_container(project: str) -> str:
    return f"{project}-edge-1"


def read_file_cmd(path: str) -> list[str]:
    """Print a state file (nothing when it is absent), inside the edge."""
    return ["sh", "-c", f"cat {path} 2>/dev/null || true"]


def in_edge(settings: Settings, cmd: list[str], what: str = "", check: bool = True):
    """Run a command inside the edge, in the shell this process keeps open there."""
    return runner.shell(settings.docker_host, edge_container(settings.project)).run(cmd, what=what, check=check)


def write_cmd(path: str, lines: str, keys: str, expect: str, text: str) -> list[str]:
    """Install `text` as the state file at `path` (removed when empty) after checking
    every line against `lines` and that each of `keys` is there; then wait for the
    edge's state line `expect`. Runs inside the edge."""
    return ["sh", "-c", WRITE_SCRIPT, "write", path, lines, keys, expect, text]


def switch_cmd(text: str, expect: str = "") -> list[str]:
    return write_cmd(LIVE_FILE, LIVE_LINES, "color version", expect, text)


def freeze_cmd(frozen: bool, text: str) -> list[str]:
    return write_cmd(FREEZE_FILE, FREEZE_LINES, "hold", f"writes={'frozen' if frozen else 'open'}", text)


def maintenance_cmd(text: str) -> list[str]:
    return write_cmd(MAINTENANCE_FILE, MAINTENANCE_LINES, "retry bypass" if text else "", f"maintenance={'on' if text else 'off'}", text)


def state_cmd() -> list[str]:
    """What the edge routes now and its requests in flight per color (colorgate.lua)."""
    return ["curl", "-s", "--max-time", "1", STATE_URL]


# --- the live color, the write freeze, the database record -----------------------


def read_active(settings: Settings) -> Active | None:
    """The live color, read from the edge (None when no color is live yet)."""
    return live_of(in_edge(settings, read_file_cmd(LIVE_FILE), "reading the edge state").stdout)


def live_of(text: str) -> Active | None:
    try:
        return parse_active(text)
    except ValueError as exc:
        raise StackError(f"the edge's routing state is damaged ({exc}): run `invoke switch --to COLOR` to rewrite it") from None


def write_active(settings: Settings, color: str, version: str) -> None:
    """Route traffic to `color`: one validated atomic write that the edge reads on the
    next request; no reload, so open connections and streams stay."""
    in_edge(settings, switch_cmd(render_live(color, version), expect=f"color={color}"), f"switching the edge to {color}")


def _wait_idle(settings: Settings, key: str, seconds: float) -> int:
    """Poll the edge's state until its counter `key` is 0, for at most `seconds`;
    returns the count left then."""
    deadline = time.monotonic() + seconds
    while True:
        proc = in_edge(settings, state_cmd(), check=False)
        count = parse_state(proc.stdout).get(key, "") if proc.returncode == 0 else ""
        left = int(count) if count.isdigit() else 0
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def drain(settings: Settings, color: str, seconds: float | None = None) -> int:
    """Wait until the edge has no request in flight to `color`, for at most the drain
    bound; returns how many were still open (streams) when it gave up."""
    return _wait_idle(settings, f"inflight_{parse_color(color)}", settings.drain_seconds if seconds is None else seconds)


def drain_writes(settings: Settings, seconds: float = 10) -> int:
    """During a freeze: wait until every write the edge let through before it has been
    answered (held writes are not counted); returns how many were still in flight."""
    return _wait_idle(settings, "inflight_writes", seconds)


def read_database_record(settings: Settings) -> dict:
    """Where the target's record says the app's database is: {"url": "local"} until
    `db.move` moved it, then the managed database's URL (no password) and the move."""
    return _database_record(in_edge(settings, read_file_cmd(DATABASE_RECORD), "reading the database record").stdout)


def _database_record(out: str) -> dict:
    try:
        record = json.loads(out) if out.strip() else {}
    except ValueError:
        raise StackError(f"the database record {DATABASE_RECORD} on the edge is damaged: fix or remove it") from None
    return record if isinstance(record, dict) and record.get("url") else {"url": "local"}


def write_database_record(settings: Settings, record: dict) -> None:
    in_edge(settings, ["sh", "-c", f'printf "%s" "$1" > {DATABASE_RECORD}.new && mv {DATABASE_RECORD}.new {DATABASE_RECORD}',
                       "record", json.dumps(record)], "recording where the database is")


def set_frozen(settings: Settings, frozen: bool) -> None:
    """Start or end a write freeze at the edge: from the next request on, writes are
    held for up to COLORGATE_HOLD_SECONDS (then 503 + Retry-After); reads go on."""
    in_edge(settings, freeze_cmd(frozen, render_freeze(settings.hold_seconds) if frozen else ""),
            "starting a write freeze" if frozen else "ending the write freeze")


def set_maintenance(settings: Settings, text: str) -> None:
    """Turn maintenance mode on (`text`: render_maintenance) or off (empty), from the
    next request on."""
    in_edge(settings, maintenance_cmd(text), "turning maintenance mode on" if text else "turning maintenance mode off")


def read_maintenance(settings: Settings) -> dict[str, str] | None:
    """The maintenance file's fields (retry, since, message, bypass), None when off."""
    text = in_edge(settings, read_file_cmd(MAINTENANCE_FILE), "reading maintenance mode").stdout
    return state_fields(text) or None


def read_files(settings: Settings, *names: str) -> dict[str, str]:
    """Several state files (names in STATE_DIR) in one exec: name -> text ("" when absent)."""
    script = "".join(f"printf '\\n@@colorgate {n}\\n'; cat {STATE_DIR}/{n} 2>/dev/null; " for n in names) + "true"
    return _sections(in_edge(settings, ["sh", "-c", script], "reading the edge state").stdout)


def is_frozen(settings: Settings) -> bool:
    return in_edge(settings, ["test", "-f", FREEZE_FILE], check=False).returncode == 0


# --- the release lock and the history -------------------------------------------------


LOCK_DIR = f"{STATE_DIR}/lock"
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
  exit {LOCK_HELD}"""
# Taken, the lock's exec also prints what a locked command decides from, read under the
# lock in the same round trip: the live file, whether writes are frozen, the database
# record, whether a canary is set and (with $3 = history) the history, each after a
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
if [ "${{3:-}}" = history ]; then printf '\\n@@colorgate history\\n'; cat {HISTORY} 2>/dev/null; fi
true"""
READ_LOCK_SCRIPT = f"""L={LOCK_DIR}
if [ -d $L ]; then
{_LOCK_REPORT}
fi"""
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

    @property
    def active(self) -> Active | None:
        return live_of(self.live)

    @property
    def database(self) -> dict:
        """The database record ({"url": "local"} until db.move)."""
        return _database_record(self.database_text)


def _sections(text: str) -> dict[str, str]:
    """`@@colorgate NAME` lines and what follows each -> {NAME: text}."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (text or "").splitlines():
        if line.startswith("@@colorgate "):
            current = sections.setdefault(line.split(" ", 1)[1], [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def parse_found(text: str) -> Found:
    body = _sections(text)
    return Found(body.get("live", ""), body.get("freeze", "").strip() == "frozen", body.get("database", ""),
                 parse_history(body["history"]) if "history" in body else None, body.get("canary", "").strip() == "canary")


@dataclass(frozen=True)
class LockState:
    """A taken lock as another command sees it."""

    holder: dict  # command, operator, since, pid, host ({} when unreadable)
    age: int  # seconds since its holder's last heartbeat
    phase: str  # where the holder was then ("" before its first step)

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
    return LockState(holder if isinstance(holder, dict) else {}, int(age) if age.lstrip("-").isdigit() else 0,
                     values.get("phase", ""))


def lock_cmd(holder: str, token: str, history: bool = False) -> list[str]:
    """Take the lock for `holder` (JSON) with `token` and print what parse_found reads
    (with the history when asked); exit 75 printing who holds it. Inside the edge."""
    return ["sh", "-c", LOCK_SCRIPT, "lock", holder, token, "history" if history else ""]


def unlock_cmd(token: str) -> list[str]:
    return ["sh", "-c", UNLOCK_SCRIPT, "unlock", token]


def break_lock_cmd() -> list[str]:
    return ["rm", "-rf", LOCK_DIR]


def phase_cmd(token: str, phase: str) -> list[str]:
    return ["sh", "-c", PHASE_SCRIPT, "phase", token, phase]


def read_lock(settings: Settings) -> LockState | None:
    """The lock as another command sees it; None when nobody holds it."""
    proc = in_edge(settings, ["sh", "-c", READ_LOCK_SCRIPT], "reading the release lock", check=False)
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
case "$c" in {'|'.join(COLORS)}) ;; *) c= ;; esac
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
    return ["sh", "-c", FINAL_SCRIPT, "history", json.dumps({**record, "live_color": LIVE_MARK, "live_version": LIVE_MARK})]


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
