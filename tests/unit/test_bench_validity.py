"""The switch benchmark refuses a run whose load client fell behind (pure logic)."""

from benchmarks.switch_under_load import TARGETS, WrkRun, first_answer_from, longest_gap, targets


def test_a_phase_that_kept_its_rate_counts():
    run = WrkRun("switches", 200, 0.0, requests=2000, seconds=10.0, late=5, slots=1900)
    assert run.behind() == ""


def test_a_phase_below_its_rate_or_sending_late_does_not_count():
    slow = WrkRun("gated", 200, 0.0, requests=1500, seconds=10.0, slots=1400)
    assert slow.behind() == "gated: wrk achieved 150 req/s of the 200 asked"
    late = WrkRun("rollback", 200, 0.0, requests=2000, seconds=10.0, late=100, slots=1900)
    assert late.behind() == "rollback: 100 of 1900 wrk requests left over 100 ms after their slot"
    # the baseline breaks the server by design: late requests there do not void the run
    assert WrkRun("baseline", 200, 0.0, requests=2000, seconds=10.0, late=100, slots=1900).behind() == ""


def test_switch_latency_is_the_first_answer_from_the_new_color_after_the_command():
    run = WrkRun("switches", 100, 0.0, answers=[(1.0, 200, "blue"), (1.05, 200, "green"), (1.2, 503, "green"), (1.3, 200, "green")])
    assert first_answer_from(run, 1.01, "green") == 1.05 - 1.01
    assert first_answer_from(run, 1.1, "green") == 1.3 - 1.1  # a failed answer is not an answer
    assert first_answer_from(run, 2.0, "green") is None
    assert longest_gap(run, 0.5, 2.0) == 2.0 - 1.3


def test_targets_say_which_were_met():
    result = {"switch": {"median": 120.0}, "gated_switch": {"total_ms": {"median": 2500.0}},
              "rollback": {"inside_command_ms": 250.0}, "stream": {"max_gap_s": 1.01, "survived": True}}
    met = {key: t["met"] for key, t in targets(result, 0).items()}
    assert met == {"failed_never_retry": True, "switch_ms": True, "gated_ms": False, "rollback_ms": True, "stream_gap_s": False}
    assert targets(result, 1)["failed_never_retry"]["met"] is False and set(TARGETS) == set(met)


def test_the_stream_target_is_not_judged_without_a_stream():
    result = {"switch": {"median": 120.0}, "gated_switch": {"total_ms": {"median": 1500.0}},
              "rollback": {"inside_command_ms": 250.0}, "stream": None}
    assert targets(result, 0)["stream_gap_s"]["met"] is None
