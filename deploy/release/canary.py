"""Canary releases: a share of the users on the new release before all of them.

`invoke deploy --canary 10,50` ships the candidate as any deploy does (images, start,
migrations, pre gates), then, instead of switching everyone at once, sends each share
of users in turn to it. The share is the edge's state file `canary` (colorgate.lua),
read per request like the live color: each user has a bucket 0-99, kept in a cookie
(new users are hashed by address and user agent into one), and buckets below the share
(shifted by a per-release offset) get the candidate; raising the share keeps everyone
who had it. Each step: the post gates on the candidate (pinned to it: they send a
bucket that lands there), then its real traffic judged interval by interval against
the stable color's in the same interval (traffic.analyse_canary; COLORGATE_ANALYSIS_*,
at least one interval per step). After the last step the usual gated switch promotes
it, and the file goes.

A failed step, an error, or an interrupted deploy returns every user to the stable
color at once (the file goes first) and stops the candidate. While the deploy runs,
`canary.abort` removes the file itself (everyone back at the next request; the deploy
sees it and stops the candidate) and `canary.promote` marks it decided (the deploy
ends its analysis and switches). A canary that outlived its deploy (killed) is removed
by the next command's reconcile: no user stays on an unwatched release.
"""

from __future__ import annotations

import secrets
import time

from deploy import edge
from deploy.colors import other
from deploy.config import Settings
from deploy.errors import BadInput, ColorgateError, GateFailed
from deploy.release import history

COOKIE = "colorgate_bucket"


def parse_percents(text: str) -> tuple[int, ...]:
    """`10,50` -> (10, 50): shares of users from 1 to 99, each above the one before."""
    try:
        percents = tuple(int(p) for p in str(text).replace(" ", "").split(",") if p)
    except ValueError:
        percents = ()
    if (
        not percents
        or any(not 1 <= p <= 99 for p in percents)
        or list(percents) != sorted(set(percents))
    ):
        raise BadInput(
            f"--canary {text!r} is not a list of rising shares of users: give percentages from 1 to 99, "
            "such as --canary 10 or --canary 10,50 (100 is the switch that follows them)"
        )
    return percents


ABORTED = "the canary was aborted (`invoke canary.abort`): everyone is on the stable color"


def start(settings: Settings, color: str, version: str, percent: int, first: bool) -> str:
    """Send `percent` of the users to `color`. Returns what an operator decided
    meanwhile ("promote": no more steps; "": went on); raises GateFailed on an abort."""
    expect, what = f"canary={color} {percent}", f"sending {percent}% of users to {color}"
    if first:
        edge.write_canary(
            settings,
            edge.render_canary(color, version, percent, secrets.randbelow(100), int(time.time())),
            expect,
            what=what,
        )
        return ""
    current = read(settings)
    if current is None:
        raise GateFailed(ABORTED)
    text = edge.render_canary(color, version, percent, current["offset"], current["since"])
    if not current["decision"] and edge.write_canary(settings, text, expect, guard=True, what=what):
        return ""
    found = decision(settings)
    if found == "abort":
        raise GateFailed(ABORTED)
    return found


def read(settings: Settings) -> dict | None:
    return edge.read_canary(settings)


def clear(settings: Settings) -> None:
    """Everyone on the live color again, from the next request on."""
    edge.write_canary(settings, "", "canary=off", what="ending the canary")


def decision(settings: Settings) -> str:
    """What an operator decided while the deploy runs: `promote`, `abort` (the file was
    removed), or "" (go on)."""
    found = read(settings)
    return "abort" if found is None else found.get("decision", "")


# --- operator commands -----------------------------------------------------------------


def status(settings: Settings) -> dict:
    found = read(settings)
    live = edge.read_active(settings)
    lock = edge.read_lock(settings)
    return {
        "canary": found,
        "live": {"color": live.color, "version": live.version} if live else None,
        "deploy": {"holder": lock.holder, "phase": lock.phase, "stale": lock.stale}
        if lock
        else None,
    }


def format_status(data: dict) -> str:
    c, live = data["canary"], data["live"] or {}
    if not c:
        return f"no canary: everyone gets {live.get('color', '-')} ({live.get('version', '-')})"
    lines = [
        f"canary: {c['color']} ({c['version']}) gets {c['percent']}% of users, since {time.strftime('%H:%M:%S', time.gmtime(c['since']))} UTC; "
        f"the others get {live.get('color', '-')} ({live.get('version', '-')})"
    ]
    if c.get("decision"):
        lines.append(f"decided: {c['decision']} (the deploy switches at its next check)")
    deploy = data["deploy"]
    if deploy and not deploy["stale"]:
        lines.append(
            f"deploy: {edge.describe_holder(deploy['holder'])}, at {history.describe_phase(deploy['phase']) or 'start'}"
        )
    else:
        lines.append(
            "deploy: none running (it died?): the next command ends this canary; `invoke canary.abort` ends it now"
        )
    return "\n".join(lines)


def abort(settings: Settings) -> str:
    """Everyone back on the stable color now; the deploy running it stops the candidate."""
    found = read(settings)
    if not found:
        return "no canary runs: nothing to abort"
    clear(settings)
    return f"canary aborted: everyone gets {other(found['color'])} again; the deploy stops {found['color']} ({found['version']})"


def promote(settings: Settings) -> str:
    """Tell the deploy running the canary to end its analysis and switch everyone."""
    found = read(settings)
    if not found:
        return "no canary runs: nothing to promote"
    lock = edge.read_lock(settings)
    if lock is None or lock.stale:
        raise ColorgateError(
            f"no deploy is running this canary (it died?), so nothing would promote it: switch everyone with "
            f"`invoke switch --to {found['color']}` (gated), or end it with `invoke canary.abort`"
        )
    if found.get("decision") != "promote":
        text = edge.render_canary(
            found["color"],
            found["version"],
            found["percent"],
            found["offset"],
            found["since"],
            "promote",
        )
        if not edge.write_canary(
            settings,
            text,
            f"canary={found['color']} {found['percent']}",
            guard=True,
            what="promoting the canary",
        ):
            return "the canary ended meanwhile: nothing to promote"
    return f"canary promoted: the deploy switches everyone to {found['color']} ({found['version']}), gated, at its next check"
