"""The edge's routing state: which color is live, the routes nginx loads, the requests in
flight per color, read and written through one shell kept open in the edge (modes.py
holds the freeze, maintenance, the canary and the database record; see
deploy/edge/__init__.py for the files)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from deploy.colors import COLORS, parse_color
from deploy.config import Settings
from deploy.edge.routes import routes_digest
from deploy.errors import BadVersion, CommandError, LockHeld, StackError
from deploy.target import connections, facts, runner

STATE_DIR = "/etc/colorgate/state"
LIVE_FILE = f"{STATE_DIR}/live"
FREEZE_FILE = f"{STATE_DIR}/freeze"
MAINTENANCE_FILE = f"{STATE_DIR}/maintenance"
GATE_TOKEN_FILE = f"{STATE_DIR}/gate-token"
DATABASE_RECORD = f"{STATE_DIR}/database.json"
CANARY_FILE = f"{STATE_DIR}/canary"
ROUTES_FILE = (
    f"{STATE_DIR}/routes.conf"  # the app's routes and the edge's answer headers (edge_routes_file)
)
LOCK_DIR = f"{STATE_DIR}/lock"  # the release lock (ledger.py)
# What the edge routes now and its requests in flight per color (colorgate.lua),
# answered only inside the container.
STATE_URL = "http://127.0.0.1:8080/.colorgate/state"

NGINX_CONF = "/etc/colorgate/nginx.conf"
VERSION_RE = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
VERSION = re.compile(f"^{VERSION_RE}$")
# Every line of a state file must match its pattern (checked again on the edge, so a
# file that did not come from here is refused before it is renamed into place).
LIVE_LINES = f"#.*|color=({'|'.join(COLORS)})|version={VERSION_RE}"

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

# Install the edge's routes ($1) and reload gracefully, in one exec: in place, `nginx -t`
# (a configuration nginx refuses is taken back: exit 3, the edge serves the old one), the
# reload, then wait until the new workers answer with the digest $2. With $3 = file, only
# in place: for an edge of an earlier Colorgate (its routes elsewhere) about to be replaced.
ROUTES_SCRIPT = f"""set -eu
f={ROUTES_FILE}
[ ! -f "$f" ] || cp "$f" "$f.old"
printf '%s' "$1" > "$f.new"
mv "$f.new" "$f"
if [ "${{3:-}}" = file ]; then rm -f "$f.old"; exit 0; fi
if ! out=$(nginx -t -q -c {NGINX_CONF} 2>&1); then
  if [ -f "$f.old" ]; then mv "$f.old" "$f"; else rm -f "$f"; fi
  echo "refused the edge's new routes: $out" >&2; exit 3
fi
rm -f "$f.old"
nginx -s reload -c {NGINX_CONF}
tries=0
until [ "$(curl -sk --max-time 1 https://127.0.0.1:8443/.colorgate/routes)" = "$2" ]; do
  tries=$((tries + 1))
  [ $tries -lt 250 ] || {{ echo "the edge does not serve its new routes 5 s after the reload: see: invoke logs edge" >&2; exit 4; }}
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
        raise BadVersion(
            f"bad version {version!r}: use letters, digits, '.', '_' or '-' (at most 128)"
        )
    return version


def render_live(color: str, version: str) -> str:
    """The state file that makes `color` (running `version`) the live color."""
    color = parse_color(color)
    check_version(version)
    return f"# Managed by Colorgate: the live color, read by the edge on every request.\ncolor={color}\nversion={version}\n"


def state_fields(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (text or "").splitlines()
        if "=" in line and not line.startswith("#")
    )


def parse_active(text: str) -> Active | None:
    """Which color a live file routes to; None when no color is live (no file).

    Raises ValueError when the file names no known color (edited by hand?).
    """
    values = state_fields(text)
    if not values:
        return None
    color = values.get("color", "")
    if color not in COLORS:
        raise ValueError(
            f"the live file names color {color!r}, expected one of {', '.join(COLORS)}"
        )
    version = values.get("version", "")
    if not VERSION.fullmatch(version):
        raise ValueError(f"the live file names version {version!r}, which is not a version tag")
    return Active(color, version)


def parse_state(text: str) -> dict[str, str]:
    """The edge's state endpoint: color, version, writes, inflight_<color>, inflight_writes."""
    return state_fields(text)


def edge_container(settings: Settings, fresh: bool = False) -> str:
    return facts.container(settings, "edge", fresh)


def read_file_cmd(path: str) -> list[str]:
    """Print a state file (nothing when it is absent), inside the edge."""
    return ["sh", "-c", f"cat {path} 2>/dev/null || true"]


# The release lock's token this process holds, per target (set by history.lock): the
# writes of a lock's holder (the live color, the freeze, the canary, maintenance) check
# it in the same exec, so a holder whose lock another operator broke changes nothing.
HELD: dict[tuple[str, str], str] = {}
LOCK_LOST = 76
GUARD_SCRIPT = f"""[ "$(cat {LOCK_DIR}/token 2>/dev/null)" = "$1" ] || exit {LOCK_LOST}
shift
exec "$@"
"""


def in_edge(
    settings: Settings, cmd: list[str], what: str = "", check: bool = True, guarded: bool = False
):
    """Run a command inside the edge, in the shell this process keeps open there. On a
    Swarm, when the shell cannot start because the edge's task was replaced meanwhile,
    once more in the task that runs now. `guarded`: when this process holds the lock,
    only while it still does (else LockHeld, whatever `check`)."""
    token = HELD.get((settings.docker_host, settings.project)) if guarded else None
    if token:
        proc = in_edge(
            settings, ["sh", "-c", GUARD_SCRIPT, "guard", token, *cmd], what, check=False
        )
        if proc.returncode == LOCK_LOST:
            raise LockHeld(
                f"{what or 'a change at the edge'}: refused: this command's release lock was broken meanwhile "
                "(--break-lock by another operator), so it changes nothing more: see `invoke status`"
            )
        if check and proc.returncode != 0:
            raise CommandError(cmd, proc.returncode, proc.stdout, proc.stderr, what)
        return proc
    shell = connections.shell(settings.docker_host, edge_container(settings))
    proc = shell.run(cmd, what=what, check=False)
    # the shell could not start: on a Swarm the edge's task may be another one now
    if proc.returncode == 125:
        now = edge_container(settings, fresh=True)
        if now != shell.container:
            return connections.shell(settings.docker_host, now).run(cmd, what=what, check=check)
    if check and proc.returncode != 0:
        raise CommandError(
            proc.args, proc.returncode, runner.redact(proc.stdout), runner.redact(proc.stderr), what
        )
    return proc


def write_cmd(path: str, lines: str, keys: str, expect: str, text: str) -> list[str]:
    """Install `text` as the state file at `path` (removed when empty) after checking
    every line against `lines` and that each of `keys` is there; then wait for the
    edge's state line `expect`. Runs inside the edge."""
    return ["sh", "-c", WRITE_SCRIPT, "write", path, lines, keys, expect, text]


def switch_cmd(text: str, expect: str = "") -> list[str]:
    return write_cmd(LIVE_FILE, LIVE_LINES, "color version", expect, text)


def routes_cmd(text: str, digest: str, reload: bool = True) -> list[str]:
    return ["sh", "-c", ROUTES_SCRIPT, "routes", text, digest, "" if reload else "file"]


def write_routes(settings: Settings, text: str, digest: str, reload: bool = True) -> None:
    """Install the edge's routes (edge_routes_file) with a graceful reload (unless
    not `reload`): requests in flight finish on the old workers."""
    in_edge(settings, routes_cmd(text, digest, reload), "reloading the edge with its new routes")


def sync_routes(settings: Settings, text: str, reload: bool = True) -> bool:
    """Give the edge `text` (edge_routes_file) unless it has those routes already:
    with a graceful reload (unless not `reload`). Returns whether it wrote them."""
    digest = routes_digest(text)
    if routes_digest(read_routes_line(settings)) == digest:
        return False
    with runner.step(
        "giving the edge the contract's routes (nginx -t, graceful reload)"
        if reload
        else "keeping the contract's routes in the edge's state"
    ):
        write_routes(settings, text, digest, reload)
    return True


def read_routes_line(settings: Settings) -> str:
    """The first line of the routes the edge keeps (names their digest; "" for none)."""
    return in_edge(
        settings,
        ["sh", "-c", f"head -n 1 {ROUTES_FILE} 2>/dev/null || true"],
        "reading the edge's routes",
    ).stdout


def state_cmd() -> list[str]:
    """What the edge routes now and its requests in flight per color (colorgate.lua)."""
    return ["curl", "-s", "--max-time", "1", STATE_URL]


# --- the live color -------------------------------------------------------------------


def read_active(settings: Settings) -> Active | None:
    """The live color, read from the edge (None when no color is live yet)."""
    return live_of(in_edge(settings, read_file_cmd(LIVE_FILE), "reading the edge state").stdout)


def live_of(text: str) -> Active | None:
    try:
        return parse_active(text)
    except ValueError as exc:
        raise StackError(
            f"the edge's routing state is damaged ({exc}): run `invoke switch --to COLOR` to rewrite it"
        ) from None


def write_active(settings: Settings, color: str, version: str) -> None:
    """Route traffic to `color`: one validated atomic write that the edge reads on the
    next request; no reload, so open connections and streams stay."""
    in_edge(
        settings,
        switch_cmd(render_live(color, version), expect=f"color={color}"),
        f"switching the edge to {color}",
        guarded=True,
    )


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
    return _wait_idle(
        settings,
        f"inflight_{parse_color(color)}",
        settings.drain_seconds if seconds is None else seconds,
    )


def drain_writes(settings: Settings, seconds: float = 10) -> int:
    """During a freeze: wait until every write the edge let through before it has been
    answered (held writes are not counted); returns how many were still in flight."""
    return _wait_idle(settings, "inflight_writes", seconds)


def read_files(settings: Settings, *names: str) -> dict[str, str]:
    """Several state files (names in STATE_DIR) in one exec: name -> text ("" when absent)."""
    script = (
        "".join(f"printf '\\n@@colorgate {n}\\n'; cat {STATE_DIR}/{n} 2>/dev/null; " for n in names)
        + "true"
    )
    return _sections(in_edge(settings, ["sh", "-c", script], "reading the edge state").stdout)


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
