"""Real traffic, per color: what the edge logged for every request it answered.

The edge writes one JSON line per request on its stdout (compose/edge/nginx.conf,
`log_format colorgate`): when, which color and version answered (empty: the edge
itself, such as a 429 or a 503 with no live color), method, path, status, the
upstream's status and times. Docker's log driver rotates it (COLORGATE_LOG_*), and
Colorgate reads it through the Engine API, so a remote host works the same.

`figures` turns a window of it into what a release is judged on: per color, the
number of requests, the share answered 5xx, and the p50/p95/p99 of the time the edge
took to answer. analysis.py's `analyse` judges the new color after a switch, interval by interval
(COLORGATE_ANALYSIS_*), against absolute bounds and against the old color's figures
from before the switch; a failed analysis is a failed gate: the release switches back.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

from deploy import edge
from deploy.config import Settings
from deploy.target import connections

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
    raw = connections.engine(
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


# --- when the log has a second's requests ---------------------------------------------

FLUSH_SECONDS = 1.2  # the edge flushes its request log every second
