"""The edge's request log, read into per-color figures (no Docker)."""

import json

from deploy.edge import locking
from deploy.release import analysis, history, report, traffic


def line(t, color, status, rt, version="v1", path="/api/x"):
    return json.dumps(
        {
            "t": t,
            "color": color,
            "version": version if color else "",
            "method": "GET",
            "path": path,
            "status": status,
            "ustatus": str(status) if color else "",
            "rt": rt,
            "urt": "-",
            "bytes": 10,
        }
    )


def test_the_edges_json_lines_are_read_and_anything_else_is_skipped():
    lines = [
        line(100.5, "blue", 200, 0.004),
        "nginx: [warn] something",
        "",
        '{"t": "broken"',
        line(101, "", 429, 0),
    ]
    found = traffic.parse(lines)
    assert [(r.at, r.color, r.status, r.seconds) for r in found] == [
        (100.5, "blue", 200, 0.004),
        (101.0, "", 429, 0.0),
    ]


def test_figures_per_color_with_the_edges_own_answers_apart():
    lines = [
        line(100 + i, "green", 503 if i < 5 else 200, (i + 1) / 1000, "v2") for i in range(100)
    ]
    lines += [line(150, "blue", 200, 0.050, "v1"), line(150, "", 429, 0)]
    found = traffic.figures(traffic.parse(lines))
    green = found["green"]
    assert (green.requests, green.errors, green.error_ratio, green.versions) == (
        100,
        5,
        0.05,
        ("v2",),
    )
    assert (green.p50_ms, green.p95_ms, green.p99_ms) == (50, 95, 99)  # nearest rank of 1..100 ms
    assert found["blue"].requests == 1 and found["blue"].p99_ms == 50
    assert found[traffic.EDGE].requests == 1 and found[traffic.EDGE].versions == ()


def test_a_window_takes_only_what_was_answered_inside_it():
    lines = [line(t, "blue", 500 if t >= 200 else 200, 0.01) for t in range(100, 300, 10)]
    before = traffic.figures(traffic.parse(lines), until=200)["blue"]
    after = traffic.figures(traffic.parse(lines), since=200)["blue"]
    assert (before.requests, before.errors) == (10, 0) and (
        after.requests,
        after.errors,
        after.error_ratio,
    ) == (10, 10, 1.0)
    assert traffic.figures(traffic.parse(lines), since=1000) == {}


def test_percentiles_of_nothing_and_of_one():
    assert traffic.percentile([], 0.99) == 0.0 and traffic.percentile([7.0], 0.5) == 7.0


def test_the_figures_print_one_line_per_color():
    text = traffic.format_figures(
        traffic.figures(traffic.parse([line(1, "blue", 200, 0.02), line(2, "blue", 502, 0.04)])), 60
    )
    head, blue = text.splitlines()
    assert (
        head.startswith("last 60s")
        and blue.split()[:4] == ["blue", "2", "1", "50.00%"]
        and blue.endswith("v1")
    )
    assert traffic.format_figures({}, 60) == "no request in the last 60s"


BOUNDS = analysis.Bounds(
    intervals=3,
    seconds=10,
    failure_limit=1,
    max_error_ratio=0.01,
    max_p95_ms=500,
    max_slowdown=3,
    min_requests=20,
    inconclusive="pass",
)


def fig(requests=100, errors=0, p95=10.0):
    return traffic.Figures(
        requests, errors, errors / requests if requests else 0, p95 / 2, p95, p95 * 1.2, ("v2",)
    )


def test_an_interval_fails_on_5xx_on_latency_and_on_slowing_down_against_the_old_color():
    assert analysis.judge(fig(), fig(), BOUNDS) == ("passed", [])
    assert analysis.judge(fig(errors=5), None, BOUNDS) == ("failed", ["5xx 5.0% > 1.0%"])
    assert analysis.judge(fig(p95=800), None, BOUNDS) == ("failed", ["p95 800 ms > 500 ms"])
    # 3x slower than the release it replaced fails even under the absolute bound
    assert analysis.judge(fig(p95=200), fig(p95=50), BOUNDS) == (
        "failed",
        ["p95 200 ms > 3 x the old color's 50 ms"],
    )
    assert analysis.judge(fig(p95=140), fig(p95=50), BOUNDS)[0] == "passed"
    # an old color faster than the floor is not a bar no release could pass
    assert analysis.judge(fig(p95=45), fig(p95=2), BOUNDS)[0] == "passed"
    # an old color with too few requests is no baseline
    assert analysis.judge(fig(p95=200), fig(requests=5, p95=10), BOUNDS)[0] == "passed"


def test_the_old_colors_figures_come_from_before_the_switch_however_long_the_post_gates_took():
    record = history.Record("deploy", "blue", "green", "v1", "v2")
    record.marks += [{"t": 1000.0, "what": "switch to green"}]
    # BOUNDS: 3 intervals of 10 s; the post gates ended 40 s after the switch
    assert analysis.baseline_span(record, "green", BOUNDS, now=1040.0) == (970.0, 1000.0)
    assert analysis.baseline_span(
        history.Record("deploy", "blue", "green", "v1", "v2"), "green", BOUNDS, now=1040.0
    ) == (1010.0, 1040.0)


def test_an_interval_with_too_few_requests_is_inconclusive():
    assert analysis.judge(fig(requests=5), None, BOUNDS) == (
        "inconclusive",
        ["5 requests, fewer than 20"],
    )
    assert analysis.judge(None, None, BOUNDS) == ("inconclusive", ["0 requests, fewer than 20"])


def test_another_operator_sees_how_long_the_analysis_has_left():
    import time

    from deploy import edge
    from deploy.release import history

    holder = {
        "command": "deploy",
        "operator": "ana@laptop",
        "since": "2026-11-27T10:00:00+00:00",
        "pid": 42,
        "host": "laptop",
    }
    phase = f"{history.ANALYSIS_PHASE}{int(time.time()) + 40}"
    message = locking.held_message(edge.LockState(holder, 3, phase))
    assert (
        ", at analysing the new color's traffic, 4" in message
        and " s left: wait for it to finish" in message
    )


def test_a_report_series_is_per_color_per_bucket_rate_error_share_and_p95():
    lines = [line(1000 + i / 10, "blue", 200, 0.002) for i in range(20)]  # 2 s of blue, 10 a second
    lines += [line(1002 + i / 10, "green", 500 if i % 4 == 0 else 200, 0.010) for i in range(20)]
    found = report.series(traffic.parse(lines), 1000, 1004, bucket=2)
    assert found["blue"] == [(0, 10.0, 0.0, 2.0)]
    assert found["green"] == [(2, 10.0, 0.25, 10.0)]


def test_the_release_report_is_a_png_with_the_switch_and_the_analysis_marked(tmp_path):
    from deploy.release.history import Record

    record = Record(
        "deploy",
        "blue",
        "green",
        "v1",
        "v2",
        started="2026-11-30T12:00:00+00:00",
        outcome="rolled back",
    )
    began = 1796040000.0 - report.REPORT_BEFORE_SECONDS  # 2026-11-30T12:00:00Z, less the lead
    record.marks = [
        {"t": began + 40, "what": "switch to green"},
        {"t": began + 50, "what": "switch back to blue"},
    ]
    record.analysis = {
        "verdict": "failed",
        "intervals": [{"from": began + 42, "to": began + 48, "verdict": "failed"}],
    }
    record.report = str(tmp_path / "reports" / "release.png")
    lines = [
        line(
            began + i / 5,
            "blue" if not 40 <= i / 5 < 50 else "green",
            500 if 42 <= i / 5 < 48 and i % 3 == 0 else 200,
            0.004,
        )
        for i in range(300)
    ]
    found = report.series(traffic.parse(lines), began, began + 60, 1.0)
    report._plot(found, began, began + 60, record, min_requests=20)
    png = (tmp_path / "reports" / "release.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # its time axis starts at the switch, read as a clock time too
    assert report.zero_of(record, began) == (began + 40, "switch to green")
    # 50 requests reached green after the switch: enough for 20 an interval, not for 100
    assert report.traffic_note(found, began + 40, began, "green", 20) == ""
    assert report.traffic_note(found, began + 40, began, "green", 100) == (
        "too little traffic to judge: 50 requests reached green after the switch "
        "(the analysis asks at least 100 an interval); its lines say little"
    )


def test_a_release_without_a_switch_is_drawn_from_its_start():
    from deploy.release.history import Record

    record = Record("deploy", "blue", "green", "v1", "v2", started="2026-11-30T12:00:00+00:00")
    record.marks = []
    assert report.zero_of(record, 1000.0) == (
        1000.0 + report.REPORT_BEFORE_SECONDS,
        "the release began",
    )
    assert report.traffic_note({}, 1030.0, 1000.0, "green", 1).startswith(
        "too little traffic to judge: 0 requests reached green"
    )


def test_routes_with_bounds_of_their_own_are_judged_by_them_and_the_rest_by_the_settings():
    from deploy.contract import Route

    routes = (
        Route("/api/export", "api", 3000, max_p95_ms=5000),
        Route("/api/", "api", 3000),
        Route("/", "web", 80),
    )
    bounds = analysis.Bounds(3, 20, 1, 0.01, 1000, 3, 20, "pass")
    slow_exports = [
        line(100 + i / 10, "green", 200, 3.0, path="/api/export/all") for i in range(30)
    ]  # 3 s each: its own bound is 5 s
    quick = [line(100 + i / 10, "green", 200, 0.010, path="/api/notes") for i in range(30)]
    verdict, broken, detail = analysis.judge_routes(
        traffic.parse(slow_exports + quick), "green", None, bounds, routes
    )
    assert (verdict, broken) == ("passed", []) and detail["/api/export"]["verdict"] == "passed"
    # the same slow exports judged by the settings' 1 s bound fail the color
    assert (
        analysis.judge_routes(
            traffic.parse(slow_exports + quick), "green", None, bounds, routes[1:]
        )[0]
        == "failed"
    )
    # a route's own bound broken fails the interval, named by its path
    slower = [line(100 + i / 10, "green", 200, 6.0, path="/api/export/all") for i in range(30)]
    verdict, broken, _ = analysis.judge_routes(
        traffic.parse(slower + quick), "green", None, bounds, routes
    )
    assert verdict == "failed" and broken == ["/api/export: p95 6000 ms > 5000 ms"]
    # only a route of its own had traffic: its verdict is the interval's
    assert (
        analysis.judge_routes(traffic.parse(slow_exports), "green", None, bounds, routes)[0]
        == "passed"
    )
    assert (
        analysis.route_of("/api/export/x", routes).path == "/api/export"
        and analysis.route_of("/x", routes[:2]) is None
    )
