"""The edge's routing state: which color nginx sends traffic to.

The live color is read from the edge itself (`state/active.conf` in its volume), never
from a file on the operator's machine. Rendering and parsing are pure; the commands
that read and change the edge are returned as argument lists for deploy.runner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deploy.colors import COLORS, parse_color
from deploy.errors import BadVersion

STATE_FILE = "/etc/colorgate/state/active.conf"
FREEZE_FILE = "/etc/colorgate/state/freeze.conf"
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
