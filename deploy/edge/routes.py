"""The edge's routes: the app's routes as nginx `location` blocks and the edge's answer
headers, in the routes file the edge loads from its state volume (`routes.conf`, first
line its digest). Pure functions of the contract; `invoke render --routes` prints them."""

from __future__ import annotations

import base64
import hashlib

from deploy.contract import SECURITY_HEADERS, App

# What the edge says of every answer itself (which color and version answered, a write
# held during a freeze, a new user's canary bucket): an app's own value of one of these is
# never passed on. Which container answered (X-Colorgate-Upstream) it tells the gates only
# (colorgate.lua, M.answered): an internal address is no client's business.
EDGE_SAYS = {
    "X-Colorgate-Color": "$cg_color",
    "X-Colorgate-Version": "$cg_version",
    "X-Colorgate-Writes": "$cg_writes",
    "X-Colorgate-Held-Ms": "$cg_held",
}


def edge_headers(app_owned: tuple[str, ...] = ()) -> list[str]:
    """The edge's answer headers as nginx directives: each security header replaces the
    app's own value (hidden, then added) unless the app owns it (`app_owned`: passed as
    the app sent it). nginx inherits `add_header` and `proxy_hide_header` into a location
    only when it sets none of its own, so a route that owns a header repeats them all."""
    lines = []
    for name, value in SECURITY_HEADERS.items():
        if name not in app_owned:
            lines += [f"proxy_hide_header {name};", f'add_header {name} "{value}" always;']
    for name, value in EDGE_SAYS.items():
        lines += [f"proxy_hide_header {name};", f"add_header {name} {value} always;"]
    lines.append("proxy_hide_header X-Colorgate-Upstream;")
    return [
        *lines,
        "add_header Set-Cookie $cg_cookie always;",
    ]  # empty (not sent) but during a canary


def edge_routes(app: App) -> str:
    """The edge's answer headers and nginx `location` blocks for the routes, for the
    edge's HTTPS server. Each sends to the live color's copy, named at request time from
    `$cg_color`, which the edge's colorgate.lua sets from the state file in the access
    phase."""
    blocks = ["# the edge's answer headers (deploy/edge/routes.py edge_headers)", *edge_headers()]
    for r in sorted(app.routes, key=lambda r: (-len(r.path), r.path)):
        lines = [
            f"location ^~ {r.path} {{",
            '    access_by_lua_block { require("colorgate").route() }',
            f"    client_max_body_size {r.body_size};",
            f"    proxy_read_timeout {r.timeout}s;",
            f"    proxy_send_timeout {r.timeout}s;",
        ]
        if r.websocket:
            lines.append("    set $cg_websocket 1;")
        if app.database and r.service in app.database.clients:
            lines.append("    set $cg_database 1;  # held while the database restarts")
        if not r.buffering:
            lines += ["    proxy_buffering off;", "    proxy_cache off;"]
        if r.app_headers:
            lines += [
                f"    # the app's own {', '.join(r.app_headers)}",
                *(f"    {line}" for line in edge_headers(r.app_headers)),
            ]
        lines += [f"    proxy_pass http://{r.service}_$cg_color:{r.port};", "}"]
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n"


ROUTES_HEADER = (
    "# colorgate routes "  # the routes file's first line: this, then the digest of the rest
)


def edge_routes_file(app: App) -> str:
    """The routes as the edge keeps them in its state (deploy/edge/state.py, ROUTES_FILE):
    a first line with their digest (what a deploy compares, so a changed contract is seen
    before anything starts), then the routes, and an answer with the digest for the edge
    itself only (so a reload is known to be served)."""
    body = edge_routes(app)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return (
        f"{ROUTES_HEADER}{digest}\n{body}"
        f'location = /.colorgate/routes {{ access_log off; allow 127.0.0.1; deny all; return 200 "{digest}\\n"; }}\n'
    )


def routes_digest(text: str) -> str:
    """The digest a routes file's first line names ("" for none, or not one of ours)."""
    first = (text or "").partition("\n")[0].strip()
    return (
        first.removeprefix(ROUTES_HEADER.strip()).strip()
        if first.startswith(ROUTES_HEADER.strip())
        else ""
    )


def edge_routes_b64(app: App) -> str:
    """The routes file as an edge started by hand receives it (COLORGATE_EDGE_ROUTES):
    Colorgate writes it into the edge's state instead."""
    return base64.b64encode(edge_routes_file(app).encode()).decode()


# --- a Swarm stack ----------------------------------------------------------------------
