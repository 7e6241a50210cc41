"""The edge's state: the one module that reads and writes the files in its state
directory (`/etc/colorgate/state`, the `edge-state` volume), all through Docker.

    active.conf     which color (and version) is live: one atomic write, `nginx -t`,
                    a graceful reload (the old file put back when nginx refuses it)
    freeze.conf     present only during a write freeze (db.move)
    database.json   where the app's database is (written by db.move, retire-local)
    lock/           the release lock (mkdir; holder JSON inside)
    history.jsonl   every release, one JSON record a line

The live color is read from the edge itself, never from a file on the operator's
machine. Rendering and parsing are pure; the commands that read and change the edge
are returned as argument lists for deploy.runner.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

from deploy import facts, runner
from deploy.colors import COLORS, parse_color
from deploy.config import Settings
from deploy.errors import BadVersion, CommandError, StackError

STATE_DIR = "/etc/colorgate/state"
STATE_FILE = f"{STATE_DIR}/active.conf"
FREEZE_FILE = f"{STATE_DIR}/freeze.conf"
DATABASE_RECORD = f"{STATE_DIR}/database.json"

FREEZE = '# Managed by Colorgate: a write freeze (db.move). API writes get 503 until removed.\nset $cg_frozen "1";\n'
NGINX_CONF = "/etc/colorgate/nginx.conf"
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SET = re.compile(r'^\s*set\s+\$(cg_\w+)\s+"([^"]*)"\s*;\s*$', re.MULTILINE)

# Write, test and reload in one exec: the new file ($1) goes in through stdin (empty
# stdin removes it), and when `nginx -t` rejects it the previous file is put back and
# nginx is not reloaded. After the reload, wait until new connections are answered by
# the new configuration (three probes in a row carry the header line $2), since
# `nginx -s reload` returns before the new workers take over.
SWITCH_SCRIPT = f"""set -eu
f=$1
if [ -f "$f" ]; then cp "$f" "$f.prev"; else rm -f "$f.prev"; fi
cat > "$f.new"
if [ -s "$f.new" ]; then mv "$f.new" "$f"; else rm -f "$f.new" "$f"; fi
if ! nginx -t -q -c {NGINX_CONF} 2>/tmp/colorgate-nginx-t.err; then
  if [ -f "$f.prev" ]; then mv "$f.prev" "$f"; else rm -f "$f"; fi
  cat /tmp/colorgate-nginx-t.err >&2
  exit 3
fi
nginx -s reload -c {NGINX_CONF}
want=${{2:-}}
[ -n "$want" ] || exit 0
tries=0; seen=0
while [ $seen -lt 3 ]; do
  if curl -sk -o /dev/null -D - --max-time 1 https://127.0.0.1:8443/healthz | tr -d '\r' | grep -qix "$want"; then
    seen=$((seen + 1))
  else
    seen=0
  fi
  tries=$((tries + 1))
  [ $tries -lt 200 ] || {{ echo "nginx reloaded, but new connections are still not answered with '$want' after 10 s" >&2; exit 4; }}
  sleep 0.05
done
"""


@dataclass(frozen=True)
class Active:
    color: str
    version: str



def check_version(version: str) -> str:
    """A version tag safe in image tags and nginx config, or BadVersion."""
    if not VERSION.match(version or ""):
        raise BadVersion(f"bad version {version!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return version


def render_upstream(color: str, version: str) -> str:
    """The include file that makes `color` (running `version`) the live color."""
    color = parse_color(color)
    check_version(version)
    return (
        "# Managed by Colorgate: the live color. Changed only with `nginx -t` and a graceful reload.\n"
        f'set $cg_color "{color}";\n'
        f'set $cg_version "{version}";\n'
    )


def parse_active(text: str) -> Active | None:
    """Which color an include file routes to; None when no color is live (empty file).

    Raises ValueError when the file names no known color (edited by hand?).
    """
    values = dict(_SET.findall(text or ""))
    if not values:
        return None
    color = values.get("cg_color", "")
    if color not in COLORS:
        raise ValueError(f"active.conf names color {color!r}, expected one of {', '.join(COLORS)}")
    version = values.get("cg_version", "")
    if not VERSION.match(version):
        raise ValueError(f"active.conf names version {version!r}, which is not a version tag")
    return Active(color, values.get("cg_version", ""))


def edge_container(project: str) -> str:
    return f"{project}-edge-1"


def read_state_cmd(project: str) -> list[str]:
    return ["docker", "exec", edge_container(project), "sh", "-c", f"cat {STATE_FILE} 2>/dev/null || true"]


def switch_cmd(project: str, path: str = STATE_FILE, expect: str = "") -> list[str]:
    """Install the include file given on stdin at `path` (removed when stdin is empty),
    `nginx -t`, reload (or restore), then wait for the response header line `expect`."""
    return ["docker", "exec", "-i", edge_container(project), "sh", "-c", SWITCH_SCRIPT, "switch", path, expect]


def expect_color(color: str) -> str:
    return f"x-colorgate-edge-color: {color}"


def expect_writes(frozen: bool) -> str:
    return f"x-colorgate-writes: {'frozen' if frozen else 'open'}"


def frozen_cmd(project: str) -> list[str]:
    return ["docker", "exec", edge_container(project), "test", "-f", FREEZE_FILE]


# --- the live color, the write freeze, the database record -----------------------


def read_active(settings: Settings) -> Active | None:
    """The live color, read from the edge (None when no color is live yet)."""
    out = runner.run(read_state_cmd(settings.project), env=settings.docker_env(), what="reading the edge state").stdout
    try:
        return parse_active(out)
    except ValueError as exc:
        raise StackError(f"the edge's routing state is damaged ({exc}): run `invoke switch --to COLOR` to rewrite it") from None


def write_active(settings: Settings, color: str, version: str) -> None:
    """Route traffic to `color`: write the include file, `nginx -t`, graceful reload."""
    runner.run(
        switch_cmd(settings.project, expect=expect_color(color)),
        input=render_upstream(color, version),
        env=settings.docker_env(),
        what=f"switching the edge to {color}",
    )


def read_database_record(settings: Settings) -> dict:
    """Where the target's record says the app's database is: {"url": "local"} until
    `db.move` moved it, then the managed database's URL (no password) and the move."""
    out = runner.run(["docker", "exec", edge_container(settings.project), "sh", "-c", f"cat {DATABASE_RECORD} 2>/dev/null || true"],
                     env=settings.docker_env(), what="reading the database record").stdout
    try:
        record = json.loads(out) if out.strip() else {}
    except ValueError:
        raise StackError(f"the database record {DATABASE_RECORD} on the edge is damaged: fix or remove it") from None
    return record if isinstance(record, dict) and record.get("url") else {"url": "local"}


def write_database_record(settings: Settings, record: dict) -> None:
    runner.run(["docker", "exec", "-i", edge_container(settings.project), "sh", "-c", f"cat > {DATABASE_RECORD}.new && mv {DATABASE_RECORD}.new {DATABASE_RECORD}"],
               input=json.dumps(record), env=settings.docker_env(), what="recording where the database is")


def set_frozen(settings: Settings, frozen: bool) -> None:
    """Start or end a write freeze at the edge (API writes get 503, reads go on), with
    `nginx -t` and a graceful reload."""
    runner.run(
        switch_cmd(settings.project, FREEZE_FILE, expect_writes(frozen)),
        input=FREEZE if frozen else "",
        env=settings.docker_env(),
        what="starting a write freeze" if frozen else "ending the write freeze",
    )


def is_frozen(settings: Settings) -> bool:
    return runner.run(frozen_cmd(settings.project), env=settings.docker_env(), check=False).returncode == 0


# --- the release lock and the history -------------------------------------------------


LOCK_DIR = f"{STATE_DIR}/lock"
HISTORY = f"{STATE_DIR}/history.jsonl"
LOCK_HELD = 75
LOCK_SCRIPT = f"""mkdir {LOCK_DIR} 2>/dev/null || {{ cat {LOCK_DIR}/holder 2>/dev/null; exit {LOCK_HELD}; }}
cat > {LOCK_DIR}/holder"""


def lock_cmd(project: str) -> list[str]:
    """Take the lock (holder JSON on stdin); exit 75 printing the holder when taken."""
    return ["docker", "exec", "-i", edge_container(project), "sh", "-c", LOCK_SCRIPT]


def unlock_cmd(project: str) -> list[str]:
    return ["docker", "exec", edge_container(project), "rm", "-rf", LOCK_DIR]


def append_history_cmd(project: str) -> list[str]:
    return ["docker", "exec", "-i", edge_container(project), "sh", "-c", f"cat >> {HISTORY}"]


def read_history_cmd(project: str) -> list[str]:
    return ["docker", "exec", edge_container(project), "sh", "-c", f"cat {HISTORY} 2>/dev/null || true"]


def append_history(settings: Settings, record: dict) -> None:
    runner.run(append_history_cmd(settings.project), input=json.dumps(record) + "\n", env=settings.docker_env(), what="recording history")


def parse_history(text: str) -> list[dict]:
    """Records, oldest first; lines that are not JSON objects are skipped."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


def read_history(settings: Settings) -> list[dict]:
    try:
        out = runner.run(read_history_cmd(settings.project), env=settings.docker_env(), what="reading history").stdout
    except CommandError as exc:
        raise facts.edge_down(settings) or exc from None
    return parse_history(out)
