"""Canary releases' pure parts (no Docker): the shares an operator gives, the state
file the edge reads, the guard that keeps an abort or a promote from being
overwritten, and the bucket the gates send to be served by the color under test."""

from __future__ import annotations

import subprocess

import pytest

from deploy import edge
from deploy.errors import ColorgateError
from deploy.release import canary


@pytest.mark.parametrize(
    "text, shares",
    [("10", (10,)), ("10,50", (10, 50)), (" 5, 25 ,75", (5, 25, 75)), ("1,99", (1, 99))],
)
def test_shares_are_rising_percentages_below_100(text, shares):
    assert canary.parse_percents(text) == shares


@pytest.mark.parametrize("text", ["", "0", "100", "50,10", "10,10", "ten", "10;50", "-5"])
def test_anything_else_is_refused_in_one_line_with_the_fix(text):
    with pytest.raises(
        ColorgateError,
        match=r"is not a list of rising shares of users: give percentages from 1 to 99",
    ):
        canary.parse_percents(text)


def write(tmp_path, text: str, guard: bool = False) -> subprocess.CompletedProcess:
    """The edge's write of the canary file, run on a directory here (no waiting for the edge)."""
    script = (edge.CANARY_GUARD + edge.WRITE_SCRIPT).replace(edge.STATE_DIR, str(tmp_path))
    path = edge.CANARY_FILE.replace(edge.STATE_DIR, str(tmp_path))
    return subprocess.run(
        [
            "sh",
            "-c",
            script,
            "canary",
            path,
            edge.CANARY_LINES,
            "color version percent offset" if text else "",
            "",
            text,
            "next" if guard else "",
        ],
        capture_output=True,
        text=True,
    )


def test_the_state_file_round_trips_and_the_edge_refuses_one_that_is_not_valid(tmp_path):
    text = edge.render_canary("green", "v2", 10, 37, 1796000000)
    assert write(tmp_path, text).returncode == 0
    found = edge.parse_canary((tmp_path / "canary").read_text())
    assert (
        found["color"],
        found["version"],
        found["percent"],
        found["offset"],
        found["decision"],
    ) == ("green", "v2", 10, 37, "")
    refused = write(tmp_path, text.replace("percent=10", "percent=100"))
    assert refused.returncode == 3 and "the line 'percent=100' is not valid there" in refused.stderr
    # the old one stays
    assert edge.parse_canary((tmp_path / "canary").read_text())["percent"] == 10
    assert write(tmp_path, "").returncode == 0 and not (tmp_path / "canary").exists()
    assert edge.parse_canary("") is None


def test_a_later_step_does_not_overwrite_an_abort_or_a_promote(tmp_path):
    # aborted: no file
    assert (
        write(
            tmp_path, edge.render_canary("green", "v2", 50, 37, 1796000000), guard=True
        ).returncode
        == 5
    )
    assert not (tmp_path / "canary").exists()
    write(tmp_path, edge.render_canary("green", "v2", 10, 37, 1796000000, decision="promote"))
    # decided
    assert (
        write(
            tmp_path, edge.render_canary("green", "v2", 50, 37, 1796000000), guard=True
        ).returncode
        == 5
    )
    assert edge.parse_canary((tmp_path / "canary").read_text())["decision"] == "promote"
    write(tmp_path, edge.render_canary("green", "v2", 10, 37, 1796000000))
    assert (
        write(
            tmp_path, edge.render_canary("green", "v2", 50, 37, 1796000000), guard=True
        ).returncode
        == 0
    )
    assert edge.parse_canary((tmp_path / "canary").read_text())["percent"] == 50


def lands_on_canary(bucket: int, found: dict) -> bool:
    """colorgate.lua's rule: (bucket + offset) % 100 < percent."""
    return (bucket + found["offset"]) % 100 < found["percent"]


def test_raising_the_share_keeps_everyone_who_had_the_canary():
    for offset in (0, 63):
        small = {b for b in range(100) if lands_on_canary(b, {"offset": offset, "percent": 10})}
        large = {b for b in range(100) if lands_on_canary(b, {"offset": offset, "percent": 50})}
        assert len(small) == 10 and len(large) == 50 and small <= large
