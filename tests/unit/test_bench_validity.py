"""The switch benchmark refuses a run whose load client fell behind (pure logic)."""

from benchmarks.switch_under_load import (
    TARGETS,
    WrkRun,
    bad_release_figures,
    first_answer_from,
    longest_gap,
    targets,
)


def test_a_phase_that_kept_its_rate_counts():
    run = WrkRun("switches", 200, 0.0, requests=2000, seconds=10.0, late=5, slots=1900)
    assert run.behind() == ""


def test_a_phase_below_its_rate_or_sending_late_does_not_count():
    slow = WrkRun("gated", 200, 0.0, requests=1500, seconds=10.0, slots=1400)
    assert slow.behind() == "gated: wrk achieved 150 req/s of the 200 asked"
    late = WrkRun("rollback", 200, 0.0, requests=2000, seconds=10.0, late=100, slots=1900)
    assert late.behind() == "rollback: 100 of 1900 wrk requests left over 100 ms after their slot"
    # the baseline breaks the server by design: late requests there do not void the run
    assert (
        WrkRun("baseline", 200, 0.0, requests=2000, seconds=10.0, late=100, slots=1900).behind()
        == ""
    )


def test_switch_latency_is_the_first_answer_from_the_new_color_after_the_command():
    run = WrkRun(
        "switches",
        100,
        0.0,
        answers=[
            (1.0, 200, "blue"),
            (1.05, 200, "green"),
            (1.2, 503, "green"),
            (1.3, 200, "green"),
        ],
    )
    assert first_answer_from(run, 1.01, "green") == 1.05 - 1.01
    assert first_answer_from(run, 1.1, "green") == 1.3 - 1.1  # a failed answer is not an answer
    assert first_answer_from(run, 2.0, "green") is None
    assert longest_gap(run, 0.5, 2.0) == 2.0 - 1.3


def test_targets_say_which_were_met():
    result = {
        "switch": {"median": 120.0},
        "gated_switch": {"total_ms": {"median": 2500.0}},
        "rollback": {"inside_command_ms": 250.0},
        "stream": {"max_gap_s": 1.01, "survived": True},
    }
    met = {key: t["met"] for key, t in targets(result, 0).items()}
    assert met == {
        "failed_never_retry": True,
        "switch_ms": True,
        "gated_ms": False,
        "rollback_ms": True,
        "stream_gap_s": False,
    }
    assert targets(result, 1)["failed_never_retry"]["met"] is False and set(TARGETS) == set(met)


def test_the_stream_target_is_not_judged_without_a_stream():
    result = {
        "switch": {"median": 120.0},
        "gated_switch": {"total_ms": {"median": 1500.0}},
        "rollback": {"inside_command_ms": 250.0},
        "stream": None,
    }
    assert targets(result, 0)["stream_gap_s"]["met"] is None


def test_a_bad_release_is_timed_from_its_switch_to_its_flip_back_and_its_failed_requests_counted():
    clock = 1_000_000.0  # time.time() - time.monotonic()
    record = {
        "outcome": "rolled back",
        "marks": [
            {"t": clock + 100.0, "what": "switch to green"},
            {"t": clock + 106.5, "what": "switch back to blue"},
        ],
    }
    run = WrkRun("bad release", 200, 90.0)
    run.answers = [
        (99.0, 500, "blue"),
        (101.0, 200, "green"),
        (102.0, 500, "green"),
        (103.0, 0, ""),
        (106.8, 200, "blue"),
        (107.5, 500, "blue"),
    ]
    figures = bad_release_figures(record, run, clock)
    assert figures["flipped_back"] and figures["time_to_detect_s"] == 6.5
    assert (figures["failed"], figures["answered"]) == (2, 4)  # inside [switch, flip-back + 0.5 s]
    never = bad_release_figures(
        {"outcome": "switched", "marks": [{"t": clock + 100, "what": "switch to green"}]},
        run,
        clock,
    )
    assert never == {"flipped_back": False, "outcome": "switched", "detail": ""}
