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
        _plot(found, began, ended, record)
        runner.say(f"   release report: {record.report}")
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a failed release
        runner.say(f"!! no release report ({type(exc).__name__}: {exc})")


def _plot(found: dict, began: float, ended: float, record: Record) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    _draw_series(axes, found)
    _draw_phases(axes, record, began)
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


def _draw_series(axes, found: dict) -> None:
    """Each color's requests, 5xx share and p95 latency, one line each; a bucket without
    requests breaks the line instead of bridging it."""
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


def _draw_phases(axes, record: Record, began: float) -> None:
    """The analysis' intervals (red where one failed) and the release's marks (a switch
    back in red, dashed), named along the top."""
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
