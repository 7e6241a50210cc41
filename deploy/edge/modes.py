"""The edge's modes beside the live color, each one file in its state directory: the write
freeze (db.move), maintenance mode, the canary (which color gets which share of users);
and the database record and the gates' token."""

from __future__ import annotations

import json
import re

from deploy.colors import COLORS, parse_color
from deploy.config import Settings
from deploy.edge.state import (
    CANARY_FILE,
    DATABASE_RECORD,
    FREEZE_FILE,
    GATE_TOKEN_FILE,
    MAINTENANCE_FILE,
    VERSION_RE,
    WRITE_SCRIPT,
    check_version,
    in_edge,
    read_file_cmd,
    state_fields,
    write_cmd,
)
from deploy.errors import BadInput, ColorgateError, StackError

FREEZE_LINES = r"#.*|hold=[0-9]+(\.[0-9]+)?|requests=database"


# A maintenance message goes into an HTML page and a JSON string as it is: no markup,
# quotes, backslashes or control characters, at most 300 characters.
MESSAGE = re.compile(r'[^\x00-\x1f\x7f<>&"\\]{0,300}')


MAINTENANCE_LINES = r'#.*|retry=[0-9]+|since=[0-9TZ:+.-]+|message=[^<>&"\\]*'


CANARY_LINES = (
    f"#.*|color=({'|'.join(COLORS)})|version={VERSION_RE}|percent=[0-9]{{1,2}}|offset=[0-9]{{1,2}}"
    "|since=[0-9]+|decision=(promote)?"
)


def render_freeze(hold_seconds: float, database: bool = False) -> str:
    """A write freeze (db.move, db.restore): writes are held; with `database` (the
    database restarts: invoke apply), every request to a route of its clients too.
    The gates' own requests pass (colorgate.lua)."""
    if database:
        return (
            f"# Managed by Colorgate: the database restarts; its clients' requests are held this long, then 503.\n"
            f"hold={hold_seconds:g}\nrequests=database\n"
        )
    return f"# Managed by Colorgate: a write freeze (db.move); writes are held this long, then 503.\nhold={hold_seconds:g}\n"


def render_maintenance(message: str, retry: int, since: str) -> str:
    if not MESSAGE.fullmatch(message):
        raise BadInput(
            'the maintenance message must be one line of at most 300 characters without < > & " or \\'
        )
    return (
        f"# Managed by Colorgate: maintenance mode; every route answers 503 with this message.\n"
        f"retry={retry}\nsince={since}\nmessage={message}\n"
    )


def freeze_cmd(frozen: bool, text: str) -> list[str]:
    return write_cmd(
        FREEZE_FILE, FREEZE_LINES, "hold", f"writes={'frozen' if frozen else 'open'}", text
    )


def maintenance_cmd(text: str) -> list[str]:
    return write_cmd(
        MAINTENANCE_FILE,
        MAINTENANCE_LINES,
        "retry" if text else "",
        f"maintenance={'on' if text else 'off'}",
        text,
    )


def read_database_record(settings: Settings) -> dict:
    """Where the target's record says the app's database is: {"url": "local"} until
    `db.move` moved it, then the managed database's URL (no password) and the move."""
    return _database_record(
        in_edge(settings, read_file_cmd(DATABASE_RECORD), "reading the database record").stdout
    )


def _database_record(out: str) -> dict:
    try:
        record = json.loads(out) if out.strip() else {}
    except ValueError:
        raise StackError(
            f"the database record {DATABASE_RECORD} on the edge is damaged: fix or remove it"
        ) from None
    return record if isinstance(record, dict) and record.get("url") else {"url": "local"}


def write_database_record(settings: Settings, record: dict) -> None:
    in_edge(
        settings,
        [
            "sh",
            "-c",
            f'printf "%s" "$1" > {DATABASE_RECORD}.new && mv {DATABASE_RECORD}.new {DATABASE_RECORD}',
            "record",
            json.dumps(record),
        ],
        "recording where the database is",
        guarded=True,
    )


def freeze_hold(settings: Settings, database: bool = False) -> int:
    """How long the edge holds a request during a freeze (set_frozen) at most."""
    return (
        max(settings.hold_seconds, settings.health_timeout) if database else settings.hold_seconds
    )


def set_frozen(settings: Settings, frozen: bool, database: bool = False) -> None:
    """Start or end a write freeze at the edge: from the next request on, writes are
    held for up to COLORGATE_HOLD_SECONDS (then 503 + Retry-After); reads go on, except,
    with `database`, those to a route of the database's clients, each held for as long
    as Colorgate waits for the database to be back (COLORGATE_HEALTH_TIMEOUT, at least
    the hold): the restart ends the hold, and none is answered 503 while it is awaited."""
    in_edge(
        settings,
        freeze_cmd(
            frozen, render_freeze(freeze_hold(settings, database), database) if frozen else ""
        ),
        "starting a write freeze" if frozen else "ending the write freeze",
        guarded=True,
    )


def set_maintenance(settings: Settings, text: str) -> None:
    """Turn maintenance mode on (`text`: render_maintenance) or off (empty), from the
    next request on."""
    in_edge(
        settings,
        maintenance_cmd(text),
        "turning maintenance mode on" if text else "turning maintenance mode off",
        guarded=True,
    )


def read_gate_token(settings: Settings) -> str:
    """The gates' token (X-Colorgate-Gate), which the edge made at its start ("" from an
    edge an older Colorgate made, which knows none: `invoke apply` makes it again)."""
    token = in_edge(
        settings, read_file_cmd(GATE_TOKEN_FILE), "reading the gates' token"
    ).stdout.strip()
    return token if re.fullmatch("[0-9a-f]{32}", token) else ""


def read_maintenance(settings: Settings) -> dict[str, str] | None:
    """The maintenance file's fields (retry, since, message, bypass), None when off."""
    text = in_edge(settings, read_file_cmd(MAINTENANCE_FILE), "reading maintenance mode").stdout
    return state_fields(text) or None


def render_canary(
    color: str, version: str, percent: int, offset: int, since: int, decision: str = ""
) -> str:
    return (
        f"color={parse_color(color)}\nversion={check_version(version)}\npercent={percent}\noffset={offset}\n"
        f"since={since}\n" + (f"decision={decision}\n" if decision else "")
    )


def parse_canary(text: str) -> dict | None:
    """The canary file's fields (percent, offset and since as numbers), None when absent."""
    fields = state_fields(text)
    if not fields.get("color"):
        return None
    return {
        **fields,
        "percent": int(fields.get("percent", "0")),
        "offset": int(fields.get("offset", "0")),
        "since": int(fields.get("since", "0")),
        "decision": fields.get("decision", ""),
    }


def read_canary(settings: Settings) -> dict | None:
    return parse_canary(in_edge(settings, read_file_cmd(CANARY_FILE), "reading the canary").stdout)


# A canary step after the first is written only while the file is there and undecided:
# an abort (the file removed) or a promote that came meanwhile is not overwritten.
CANARY_GUARD = """if [ "${6:-}" = next ]; then
  [ -f "$1" ] || { echo "aborted" >&2; exit 5; }
  ! grep -q '^decision=.' "$1" || { echo "decided" >&2; exit 5; }
fi
"""


def canary_cmd(text: str, expect: str, guard: bool = False) -> list[str]:
    return [
        "sh",
        "-c",
        CANARY_GUARD + WRITE_SCRIPT,
        "canary",
        CANARY_FILE,
        CANARY_LINES,
        "color version percent offset" if text else "",
        expect,
        text,
        "next" if guard else "",
    ]


def write_canary(
    settings: Settings, text: str, expect: str, guard: bool = False, what: str = ""
) -> bool:
    """Install the canary file (empty: remove it), then wait until the edge routes by
    it; False when `guard` found it aborted or decided meanwhile."""
    proc = in_edge(
        settings,
        canary_cmd(text, expect, guard),
        what or "writing the canary",
        check=False,
        guarded=True,
    )
    if proc.returncode == 5:
        return False
    if proc.returncode != 0:
        raise ColorgateError(
            f"the edge refused the canary ({(proc.stderr.strip().splitlines() or ['no output'])[-1]})"
        )
    return True


def is_frozen(settings: Settings) -> bool:
    return in_edge(settings, ["test", "-f", FREEZE_FILE], check=False).returncode == 0
