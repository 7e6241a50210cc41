"""The edge's request log, read into per-color figures (no Docker)."""

import json

from deploy import traffic


def line(t, color, status, rt, version="v1", path="/api/x"):
    return json.dumps({"t": t, "color": color, "version": version if color else "", "method": "GET", "path": path,
                       "status": status, "ustatus": str(status) if color else "", "rt": rt, "urt": "-", "bytes": 10})


def test_the_edges_json_lines_are_read_and_anything_else_is_skipped():
    lines = [line(100.5, "blue", 200, 0.004), "nginx: [warn] something", "", '{"t": "broken"', line(101, "", 429, 0)]
    found = traffic.parse(lines)
    assert [(r.at, r.color, r.status, r.seconds) for r in found] == [(100.5, "blue", 200, 0.004), (101.0, "", 429, 0.0)]


def test_figures_per_color_with_the_edges_own_answers_apart():
    lines = [line(100 + i, "green", 503 if i < 5 else 200, (i + 1) / 1000, "v2") for i in range(100)]
    lines += [line(150, "blue", 200, 0.050, "v1"), line(150, "", 429, 0)]
    found = traffic.figures(traffic.parse(lines))
    green = found["green"]
    assert (green.requests, green.errors, green.error_ratio, green.versions) == (100, 5, 0.05, ("v2",))
    assert (green.p50_ms, green.p95_ms, green.p99_ms) == (50, 95, 99)  # nearest rank of 1..100 ms
    assert found["blue"].requests == 1 and found["blue"].p99_ms == 50
    assert found[traffic.EDGE].requests == 1 and found[traffic.EDGE].versions == ()


def test_a_window_takes_only_what_was_answered_inside_it():
    lines = [line(t, "blue", 500 if t >= 200 else 200, 0.01) for t in range(100, 300, 10)]
    before = traffic.figures(traffic.parse(lines), until=200)["blue"]
    after = traffic.figures(traffic.parse(lines), since=200)["blue"]
    assert (before.requests, before.errors) == (10, 0) and (after.requests, after.errors, after.error_ratio) == (10, 10, 1.0)
    assert traffic.figures(traffic.parse(lines), since=1000) == {}


def test_percentiles_of_nothing_and_of_one():
    assert traffic.percentile([], 0.99) == 0.0 and traffic.percentile([7.0], 0.5) == 7.0


def test_the_figures_print_one_line_per_color():
    text = traffic.format_figures(traffic.figures(traffic.parse([line(1, "blue", 200, 0.02), line(2, "blue", 502, 0.04)])), 60)
    head, blue = text.splitlines()
    assert head.startswith("last 60s") and blue.split()[:4] == ["blue", "2", "1", "50.00%"] and blue.endswith("v1")
    assert traffic.format_figures({}, 60) == "no request in the last 60s"


BOUNDS = traffic.Bounds(intervals=3, seconds=10, failure_limit=1, max_error_ratio=0.01, max_p95_ms=500, max_slowdown=3,
                        min_requests=20, inconclusive="pass")


def fig(requests=100, errors=0, p95=10.0):
    return traffic.Figures(requests, errors, errors / requests if requests else 0, p95 / 2, p95, p95 * 1.2, ("v2",))


def test_an_interval_fails_on_5xx_on_latency_and_on_slowing_down_against_the_old_color():
    assert traffic.judge(fig(), fig(), BOUNDS) == ("passed", [])
    assert traffic.judge(fig(errors=5), None, BOUNDS) == ("failed", ["5xx 5.0% > 1.0%"])
    assert traffic.judge(fig(p95=800), None, BOUNDS) == ("failed", ["p95 800 ms > 500 ms"])
    # 3x slower than the release it replaced fails even under the absolute bound
    assert traffic.judge(fig(p95=200), fig(p95=50), BOUNDS) == ("failed", ["p95 200 ms > 3 x the old color's 50 ms"])
    assert traffic.judge(fig(p95=140), fig(p95=50), BOUNDS)[0] == "passed"
    # an old color faster than the floor is not a bar no release could pass
    assert traffic.judge(fig(p95=45), fig(p95=2), BOUNDS)[0] == "passed"
    # an old color with too few requests is no baseline
    assert traffic.judge(fig(p95=200), fig(requests=5, p95=10), BOUNDS)[0] == "passed"


def test_an_interval_with_too_few_requests_is_inconclusive():
    assert traffic.judge(fig(requests=5), None, BOUNDS) == ("inconclusive", ["5 requests, fewer than 20"])
    assert traffic.judge(None, None, BOUNDS) == ("inconclusive", ["0 requests, fewer than 20"])


def test_another_operator_sees_how_long_the_analysis_has_left():
    import time

    from deploy import edge, history

    holder = {"command": "deploy", "operator": "ana@laptop", "since": "2026-11-27T10:00:00+00:00", "pid": 42, "host": "laptop"}
    phase = f"{history.ANALYSIS_PHASE}{int(time.time()) + 40}"
    message = history.held_message(edge.LockState(holder, 3, phase))
    assert ", at analysing the new color's traffic, 4" in message and " s left: wait for it to finish" in message
