"""The traffic analysis after a switch: each interval of the new color's real traffic
judged against the old color's (5xx share, latency per route), and the decision to keep
it or switch back; a canary judged the same way beside the stable color."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

from deploy.config import Settings
from deploy.edge.locking import at
from deploy.errors import GateFailed
from deploy.release.history import ANALYSIS_PHASE, Record
from deploy.release.traffic import FLUSH_SECONDS, Figures, Request, figures, read
from deploy.target import runner

SLOWDOWN_FLOOR_MS = 50.0  # an old color faster than this is compared as if it took this long


@dataclass(frozen=True)
class Bounds:
    intervals: int
    seconds: float
    failure_limit: int
    max_error_ratio: float
    max_p95_ms: float
    max_slowdown: float
    min_requests: int
    inconclusive: str  # pass, extend or fail

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(
            settings.analysis_intervals,
            settings.analysis_seconds,
            settings.analysis_failure_limit,
            settings.analysis_max_error_ratio,
            settings.analysis_max_p95_ms,
            settings.analysis_max_slowdown,
            settings.analysis_min_requests,
            settings.analysis_inconclusive,
        )


def judge(
    found: Figures | None,
    baseline: Figures | None,
    bounds: Bounds,
    against: str = "the old color's",
) -> tuple[str, list[str]]:
    """An interval's verdict (passed, failed, inconclusive) and the bounds it broke."""
    count = found.requests if found else 0
    if found is None or count < bounds.min_requests:
        return "inconclusive", [f"{count} requests, fewer than {bounds.min_requests}"]
    broken = []
    if found.error_ratio > bounds.max_error_ratio:
        broken.append(f"5xx {found.error_ratio:.1%} > {bounds.max_error_ratio:.1%}")
    if found.p95_ms > bounds.max_p95_ms:
        broken.append(f"p95 {found.p95_ms:.0f} ms > {bounds.max_p95_ms:.0f} ms")
    if baseline is not None and baseline.requests >= bounds.min_requests:
        limit = bounds.max_slowdown * max(baseline.p95_ms, SLOWDOWN_FLOOR_MS)
        if found.p95_ms > limit:
            broken.append(
                f"p95 {found.p95_ms:.0f} ms > {bounds.max_slowdown:g} x {against} {baseline.p95_ms:.0f} ms"
            )
    return ("failed" if broken else "passed"), broken


def route_of(path: str, routes) -> object | None:
    """The route nginx sends `path` to: the longest prefix that matches."""
    matching = [r for r in routes if path.startswith(r.path)]
    return max(matching, key=lambda r: len(r.path)) if matching else None


def judge_routes(
    requests: list[Request],
    color: str,
    baseline: Figures | None,
    bounds: Bounds,
    routes,
    against: str = "the old color's",
) -> tuple[str, list[str], dict]:
    """An interval's verdict for `color` where routes of the contract carry their own
    bounds (x-colorgate.routes[].analysis): each such route's requests are judged by
    its bounds alone, the rest by the settings' (and against the baseline). Returns
    (verdict, broken, {route path: verdict and figures} for the routes of their own)."""
    own = [r for r in routes if r.own_bounds]
    mine = [r for r in requests if r.color == color]
    groups: dict[str, list[Request]] = {}
    for r in mine:
        route = route_of(r.path, routes)
        groups.setdefault(route.path if route is not None and route.own_bounds else "", []).append(
            r
        )
    rest = figures(groups.get("", [])).get(color)
    verdict, broken = (
        judge(rest, baseline, bounds, against) if rest or not own else ("inconclusive", [])
    )
    detail, failed = {}, verdict == "failed"
    for route in own:
        found = figures(groups.get(route.path, [])).get(color)
        limits = replace(
            bounds,
            **{
                k: v
                for k, v in (
                    ("max_error_ratio", route.max_error_ratio),
                    ("max_p95_ms", route.max_p95_ms),
                )
                if v is not None
            },
        )
        v, b = judge(found, None, limits)
        detail[route.path] = {"verdict": v, "figures": asdict(found) if found else None}
        if v == "failed":
            failed = True
            broken += [f"{route.path}: {x}" for x in b]
        elif v == "passed" and verdict == "inconclusive" and not rest:
            verdict = "passed"
    return ("failed" if failed else verdict), broken, detail


def describe(found: Figures | dict | None) -> str:
    """Figures in a line (or their dict, as the history keeps them)."""
    if not found:
        return "no request"
    f = asdict(found) if isinstance(found, Figures) else found
    return f"{f['requests']} requests, 5xx {f['error_ratio']:.1%}, p95 {f['p95_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms"


def format_interval(interval: dict, against: str = "") -> str:
    """One judged interval as the history keeps it, with `against`'s figures beside it (canary steps)."""
    return (
        f"interval {interval['interval']}: {describe(interval.get('figures'))}"
        + (f" ({against}: {describe(interval.get('baseline'))})" if against else "")
        + f": {interval['verdict']}"
        + (f" ({'; '.join(interval['broken'])})" if interval.get("broken") else "")
    )


def baseline_span(record: Record, color: str, bounds: Bounds, now: float) -> tuple[float, float]:
    """The span the old color's figures are taken from: as long as the analysis, up to
    the switch to `color` (its mark in the record; `now` without one), so that the post
    gates' time in between never leaves it without the old color's traffic."""
    switched = next(
        (m["t"] for m in reversed(record.marks) if m["what"] == f"switch to {color}"), now
    )
    return switched - bounds.intervals * bounds.seconds, switched


def analyse(settings: Settings, record: Record, color: str, old_color: str) -> None:
    """Judge `color`'s real traffic after the switch, one interval at a time, from now
    on (the gates' own requests are over); each interval's figures and verdict go into
    the record. Raises GateFailed once `failure_limit` intervals failed."""
    bounds = Bounds.of(settings)
    if bounds.intervals <= 0:
        return
    start = time.time()
    since, until = baseline_span(record, color, bounds, start)
    baseline = figures(read(settings, since), since=since, until=until).get(old_color)
    record.analysis.update(
        {
            "color": color,
            "bounds": asdict(bounds),
            "baseline": asdict(baseline) if baseline else None,
            "intervals": [],
        }
    )
    runner.say(
        f"   analysis of {color}: {bounds.intervals} x {bounds.seconds:g}s; {old_color} before the switch: {describe(baseline)}"
    )
    try:
        _intervals(settings, record, record.analysis, color, bounds, start, baseline=baseline)
    finally:
        record.timings["analysis"] = round(time.time() - start, 3)


def analyse_canary(
    settings: Settings, record: Record, color: str, stable: str, percent: int, promoted
) -> bool:
    """Judge the canary `color` at `percent` of the users against `stable` in the same
    intervals (COLORGATE_ANALYSIS_*, at least one interval). `promoted()` is asked
    every second (it raises on an abort); True when it said so: no more analysis."""
    bounds = Bounds.of(settings)
    bounds = replace(bounds, intervals=max(1, bounds.intervals))
    entry = {"percent": percent, "intervals": []}
    record.analysis.setdefault("canary", []).append(entry)
    runner.say(
        f"   analysis of {color} at {percent}% of users: {bounds.intervals} x {bounds.seconds:g}s, against {stable} in the same intervals"
    )
    start = time.time()
    try:
        return _intervals(
            settings, record, entry, color, bounds, start, stable=stable, promoted=promoted
        )
    finally:
        record.timings["canary_analysis"] = round(
            record.timings.get("canary_analysis", 0.0) + time.time() - start, 3
        )


def _intervals(
    settings: Settings,
    record: Record,
    entry: dict,
    color: str,
    bounds: Bounds,
    start: float,
    baseline: Figures | None = None,
    stable: str = "",
    promoted=None,
) -> bool:
    """Judge `color` interval by interval into entry["intervals"]; the baseline is
    `baseline`, or `stable`'s figures in the same interval."""
    planned, failed, number = bounds.intervals, 0, 0
    while number < planned:
        number += 1
        end = start + bounds.seconds
        at(record, f"{ANALYSIS_PHASE}{int(start + (planned - number + 1) * bounds.seconds)}")
        with runner.step(f"analysing {color}'s traffic, interval {number} of {planned}"):
            if _wait_interval(end, promoted):
                entry["verdict"] = "promoted"
                runner.say("   promoted by an operator (`invoke canary.promote`): no more analysis")
                return True
            requests = [r for r in read(settings, start) if start <= r.at < end]
            found_all = figures(requests)
        found = found_all.get(color)
        if stable:
            baseline = found_all.get(stable)
        against = f"{stable}'s" if stable else "the old color's"
        verdict, broken, routes = judge_routes(
            requests, color, baseline, bounds, settings.app.routes, against
        )
        if verdict == "inconclusive":
            if bounds.inconclusive == "extend" and planned < 2 * bounds.intervals:
                planned += 1
            elif bounds.inconclusive == "fail":
                verdict = "failed"
        judged = {"interval": number, "from": round(start, 3), "to": round(end, 3)}
        judged |= {
            "verdict": verdict,
            "broken": broken,
            "figures": asdict(found) if found else None,
        }
        judged |= {"routes": routes} if routes else {}
        judged |= {"baseline": asdict(baseline) if baseline else None} if stable else {}
        entry["intervals"].append(judged)
        runner.say(f"   {format_interval(entry['intervals'][-1], stable)}")
        if verdict == "failed":
            failed += 1
            if failed >= bounds.failure_limit:
                entry["verdict"] = "failed"
                raise GateFailed(
                    f"the analysis of {color}'s traffic failed at interval {number}: {'; '.join(broken)}"
                )
        start = end
    entry["verdict"] = "passed"
    return False


def _wait_interval(end: float, promoted) -> bool:
    """Until the interval ending at `end` reached the edge's log; True when an operator
    promoted the canary meanwhile."""
    while (left := end + FLUSH_SECONDS - time.time()) > 0:
        time.sleep(min(1.0, left))
        if promoted and promoted():
            return True
    return False
