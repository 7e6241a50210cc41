"""The release report: one PNG per release of both colors' requests, errors and latency
across it, from the edge's request log."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

from deploy.config import Settings
from deploy.release.history import Record
from deploy.release.traffic import EDGE, FLUSH_SECONDS, Request, percentile, read
from deploy.target import runner

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
        _plot(found, began, ended, record, settings.analysis_min_requests)
        runner.say(f"   release report: {record.report}")
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a failed release
        runner.say(f"!! no release report ({type(exc).__name__}: {exc})")


def zero_of(record: Record, began: float) -> tuple[float, str]:
    """Where the report's time axis starts (its 0) and what happened then: the first
    switch (or canary step) of the release, else its start."""
    for mark in record.marks:
        if mark["what"].startswith(("switch to", "canary")):
            return mark["t"], mark["what"]
    return began + REPORT_BEFORE_SECONDS, "the release began"


def traffic_note(found: dict, zero: float, began: float, color: str, min_requests: int) -> str:
    """In words, when `color` had too little traffic after the switch for the figures to
    judge it (fewer requests than the analysis asks of one interval); "" otherwise."""
    bucket = _bucket(found)
    after = sum(p[1] * bucket for p in found.get(color, []) if began + p[0] >= zero)
    if round(after) >= min_requests:
        return ""
    return (
        f"too little traffic to judge: {round(after)} requests reached {color} after the switch "
        f"(the analysis asks at least {min_requests} an interval); its lines say little"
    )


def _plot(found: dict, began: float, ended: float, record: Record, min_requests: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zero, what = zero_of(record, began)
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    _draw_series(axes, found, zero - began)
    _draw_phases(axes, record, zero)
    for ax, label in zip(
        axes, ("requests / s", "answered 5xx (%)", "p95 latency (ms)"), strict=True
    ):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    clock = time.strftime("%H:%M:%S UTC", time.gmtime(zero))
    axes[-1].set_xlabel(f"seconds from {what} (0 = {clock}); before it, the old color's traffic")
    note = traffic_note(found, zero, began, record.to_color, min_requests)
    if note:
        axes[0].text(
            0.5,
            0.5,
            note,
            transform=axes[0].transAxes,
            ha="center",
            va="center",
            fontsize=10,
            color="darkred",
            wrap=True,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "darkred"},
        )
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


def _bucket(found: dict) -> float:
    """The series' bucket: the smallest step between two of its points."""
    steps = sorted(
        {
            b[0] - a[0]
            for points in found.values()
            for a, b in itertools.pairwise(points)
            if b[0] > a[0]
        }
    )
    return steps[0] if steps else 1.0


def _draw_series(axes, found: dict, offset: float) -> None:
    """Each color's requests, 5xx share and p95 latency, one line each, `offset` seconds
    to the left; a bucket without requests breaks the line instead of bridging it."""
    bucket = _bucket(found)
    for color, points in found.items():
        gapped = []  # a bucket without requests breaks the line instead of bridging it
        for point in points:
            if gapped and point[0] - gapped[-1][0] > 1.5 * bucket:
                gapped.append((gapped[-1][0] + bucket, math.nan, math.nan, math.nan))
            gapped.append(point)
        points = gapped
        xs = [p[0] - offset for p in points]
        for ax, i in zip(axes, (1, 2, 3), strict=True):
            ax.plot(
                xs,
                [p[i] * (100 if i == 2 else 1) for p in points],
                color=SERIES.get(color, "black"),
                lw=1.2,
                label=color if color != EDGE else "the edge itself",
                marker="." if len(xs) < 40 else None,
            )


def _draw_phases(axes, record: Record, zero: float) -> None:
    """The analysis' intervals (red where one failed) and the release's marks (a switch
    back in red, dashed), named along the top, `zero` their origin."""
    spans = [
        *record.analysis.get("intervals", []),
        *(i for step in record.analysis.get("canary", []) for i in step.get("intervals", [])),
    ]
    for ax in axes:
        for span in spans:
            ax.axvspan(
                span["from"] - zero,
                span["to"] - zero,
                color="red" if span["verdict"] == "failed" else "gray",
                alpha=0.08,
            )
        for mark in record.marks:
            back = mark["what"].startswith("switch back") or mark["what"].startswith("canary ended")
            ax.axvline(
                mark["t"] - zero, color="red" if back else "black", lw=1, ls="--" if back else "-"
            )
    for mark in record.marks:
        axes[0].annotate(
            mark["what"],
            (mark["t"] - zero, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            va="top",
            ha="right",
        )
    if spans:
        axes[1].annotate(
            f"analysis: {len(spans)} interval(s) judged (red: failed)",
            (spans[0]["from"] - zero, 0.95),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            va="top",
            ha="left",
            color="dimgray",
        )
