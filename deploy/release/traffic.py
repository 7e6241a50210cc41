"""Real traffic, per color: what the edge logged for every request it answered.

The edge writes one JSON line per request on its stdout (compose/edge/nginx.conf,
`log_format colorgate`): when, which color and version answered (empty: the edge
itself, such as a 429 or a 503 with no live color), method, path, status, the
upstream's status and times. Docker's log driver rotates it (COLORGATE_LOG_*), and
Colorgate reads it through the Engine API, so a remote host works the same.

`figures` turns a window of it into what a release is judged on: per color, the
number of requests, the share answered 5xx, and the p50/p95/p99 of the time the edge
took to answer. `analyse` judges the new color after a switch, interval by interval
(COLORGATE_ANALYSIS_*), against absolute bounds and against the old color's figures
from before the switch; a failed analysis is a failed gate: the release switches back.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from deploy import edge
from deploy.target import runner
from deploy.config import Settings
from deploy.errors import GateFailed
from deploy.release.history import ANALYSIS_PHASE, Record
from deploy.edge.locking import at

EDGE = "edge"  # the bucket of requests the edge answered itself (no color)


@dataclass(frozen=True)
class Request:
    at: float  # seconds since the epoch
    color: str  # blue, green, or "" (the edge itself)
    version: str
    method: str
    path: str
    status: int
    seconds: float  # the whole request, as the edge saw it


@dataclass(frozen=True)
class Figures:
    requests: int
    errors: int  # answered 5xx
    error_ratio: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    versions: tuple[str, ...]


def parse(lines: list[str]) -> list[Request]:
    """The edge's JSON lines (anything else in its output is skipped)."""
    found = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
            found.append(
                Request(
                    float(d["t"]),
                    d.get("color", ""),
                    d.get("version", ""),
                    d.get("method", ""),
                    d.get("path", ""),
                    int(d["status"]),
                    float(d.get("rt", 0)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return found


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def figures(
    requests: list[Request], since: float | None = None, until: float | None = None
) -> dict[str, Figures]:
    """Per color (and EDGE for the edge's own answers), over [since, until)."""
    groups: dict[str, list[Request]] = {}
    for r in requests:
        if (since is None or r.at >= since) and (until is None or r.at < until):
            groups.setdefault(r.color or EDGE, []).append(r)
    out = {}
    for color, rs in sorted(groups.items()):
        times = [r.seconds * 1000 for r in rs]
        errors = sum(1 for r in rs if r.status >= 500)
        out[color] = Figures(
            len(rs),
            errors,
            round(errors / len(rs), 4),
            percentile(times, 0.50),
            percentile(times, 0.95),
            percentile(times, 0.99),
            tuple(sorted({r.version for r in rs if r.version})),
        )
    return out


def read(settings: Settings, since: float) -> list[Request]:
    """What the edge logged from `since` (seconds since the epoch) on: at most a second
    behind (the log's buffer is flushed every second)."""
    raw = runner.engine(
        settings.docker_host,
        "logs",
        edge.edge_container(settings),
        stdout=True,
        stderr=False,
        since=int(since),
        what="reading the edge's request log",
    )
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return [r for r in parse(text.splitlines()) if r.at >= since]


def window(settings: Settings, seconds: float) -> dict[str, Figures]:
    now = time.time()
    return figures(read(settings, now - seconds), since=now - seconds)


def as_json(found: dict[str, Figures]) -> dict:
    return {color: asdict(f) for color, f in found.items()}


def format_figures(found: dict[str, Figures], seconds: float) -> str:
    if not found:
        return f"no request in the last {seconds:g}s"
    lines = [
        f"last {seconds:g}s    requests   5xx      ratio    p50 ms   p95 ms   p99 ms   versions"
    ]
    for color, f in found.items():
        lines.append(
            f"{color:<14}{f.requests:>8}{f.errors:>6}{f.error_ratio:>11.2%}{f.p50_ms:>9.0f}{f.p95_ms:>9.0f}"
            f"{f.p99_ms:>9.0f}   {', '.join(f.versions) or '-'}"
        )
    return "\n".join(lines)


# --- the analysis window after a switch ---------------------------------------------

FLUSH_SECONDS = 1.2  # the edge flushes its request log every second
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
            while (left := end + FLUSH_SECONDS - time.time()) > 0:
                time.sleep(min(1.0, left))
                if promoted and promoted():
                    entry["verdict"] = "promoted"
                    runner.say(
                        "   promoted by an operator (`invoke canary.promote`): no more analysis"
                    )
                    return True
            requests = [r for r in read(settings, start) if start <= r.at < end]
            found_all = figures(requests)
        found = found_all.get(color)
        if stable:
            baseline = found_all.get(stable)
        verdict, broken, routes = judge_routes(
            requests,
            color,
            baseline,
            bounds,
            settings.app.routes,
            f"{stable}'s" if stable else "the old color's",
        )
        if verdict == "inconclusive":
            if bounds.inconclusive == "extend" and planned < 2 * bounds.intervals:
                planned += 1
            elif bounds.inconclusive == "fail":
                verdict = "failed"
        entry["intervals"].append(
            {
                "interval": number,
                "from": round(start, 3),
                "to": round(end, 3),
                "verdict": verdict,
                "broken": broken,
                "figures": asdict(found) if found else None,
                **({"routes": routes} if routes else {}),
                **({"baseline": asdict(baseline) if baseline else None} if stable else {}),
            }
        )
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


# --- the release report -------------------------------------------------------------------

REPORT_BEFORE_SECONDS = (
    30  # the report starts this long before the release: the old color's traffic
)
SERIES = {"blue": "tab:blue", "green": "tab:green", EDGE: "tab:gray"}


def series(
    requests: list[Request], since: float, until: float, bucket: float
) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per color: (seconds since `since`, requests a second, 5xx share, p95 ms) per bucket
    with requests in it."""
    out: dict[str, list] = {}
    groups: dict[tuple[str, int], list[Request]] = {}
    for r in requests:
        if since <= r.at < until:
            groups.setdefault((r.color or EDGE, int((r.at - since) // bucket)), []).append(r)
    for (color, n), rs in sorted(groups.items()):
        errors = sum(1 for r in rs if r.status >= 500)
        out.setdefault(color, []).append(
            (
                n * bucket,
                len(rs) / bucket,
                errors / len(rs),
                percentile([r.seconds * 1000 for r in rs], 0.95),
            )
        )
    return out


def write_report(settings: Settings, record: Record) -> None:
    """The release's PNG (record.report): both colors' request rate, 5xx share and p95
    over the release and its analysis, the switches and canary steps marked, the
    analysed intervals shaded. Never fails a release: a report that cannot be made is said."""
    from datetime import datetime

    try:
        began = datetime.fromisoformat(record.started).timestamp() - REPORT_BEFORE_SECONDS
        ended = time.time() + 0.5
        time.sleep(FLUSH_SECONDS)  # the edge's last requests of the release reach its log
        found = series(
            read(settings, began), began, ended, max(1.0, math.ceil((ended - began) / 150))
        )
        _plot(found, began, ended, record)
        runner.say(f"   release report: {record.report}")
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a failed release
        runner.say(f"!! no release report ({type(exc).__name__}: {exc})")


def _plot(found: dict, began: float, ended: float, record: Record) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    steps = sorted(
        {
            b[0] - a[0]
            for points in found.values()
            for a, b in itertools.pairwise(points)
            if b[0] > a[0]
        }
    )
    bucket = steps[0] if steps else 1.0
    for color, points in found.items():
        gapped = []  # a bucket without requests breaks the line instead of bridging it
        for point in points:
            if gapped and point[0] - gapped[-1][0] > 1.5 * bucket:
                gapped.append((gapped[-1][0] + bucket, math.nan, math.nan, math.nan))
            gapped.append(point)
        points = gapped
        xs = [p[0] for p in points]
        for ax, i in zip(axes, (1, 2, 3), strict=True):
            ax.plot(
                xs,
                [p[i] * (100 if i == 2 else 1) for p in points],
                color=SERIES.get(color, "black"),
                lw=1.2,
                label=color if color != EDGE else "the edge itself",
                marker="." if len(xs) < 40 else None,
            )
    spans = [
        *record.analysis.get("intervals", []),
        *(i for step in record.analysis.get("canary", []) for i in step.get("intervals", [])),
    ]
    for ax in axes:
        for span in spans:
            ax.axvspan(
                span["from"] - began,
                span["to"] - began,
                color="red" if span["verdict"] == "failed" else "gray",
                alpha=0.08,
            )
        for mark in record.marks:
            back = mark["what"].startswith("switch back") or mark["what"].startswith("canary ended")
            ax.axvline(
                mark["t"] - began, color="red" if back else "black", lw=1, ls="--" if back else "-"
            )
    for mark in record.marks:
        axes[0].annotate(
            mark["what"],
            (mark["t"] - began, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            va="top",
            ha="right",
        )
    for ax, label in zip(
        axes, ("requests / s", "answered 5xx (%)", "p95 latency (ms)"), strict=True
    ):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel(f"seconds since {REPORT_BEFORE_SECONDS} s before the release began")
    verdict = record.analysis.get("verdict") or next(
        (s.get("verdict") for s in reversed(record.analysis.get("canary", []))), ""
    )
    fig.suptitle(
        f"{record.action} {record.from_color} {record.from_version} -> {record.to_color} {record.to_version}: "
        f"{record.outcome}"
        + (f" (analysis: {verdict})" if verdict else "")
        + f"  [{record.started}]",
        fontsize=11,
    )
    fig.tight_layout()
    Path(record.report).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(record.report, dpi=80)
    plt.close(fig)
