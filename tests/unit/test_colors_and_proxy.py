"""Colors, and the edge's live file: rendering it, the checks before it is installed
(the edge's own script, run here with sh), reading it back."""

import subprocess

import pytest

from deploy import colors, config, edge, profiles
from deploy.errors import ColorgateError


@pytest.mark.parametrize("raw, color", [("blue", "blue"), (" Green ", "green"), ("BLUE", "blue")])
def test_parse_color(raw, color):
    assert colors.parse_color(raw) == color


@pytest.mark.parametrize("raw", ["purple", "", "blue,green", "bleu"])
def test_unknown_color_lists_the_valid_ones(raw):
    with pytest.raises(ColorgateError, match=r"^unknown color .*: use one of blue, green$"):
        colors.parse_color(raw)


def test_other():
    assert colors.other("blue") == "green" and colors.other("green") == "blue"


def test_render_then_parse_round_trip():
    text = edge.render_live("green", "v12")
    # the routing data is only the color and version: the routes come from the app's contract
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "color=green",
        "version=v12",
    ]
    assert edge.parse_active(text) == edge.Active("green", "v12")


def test_no_state_means_no_live_color():
    assert edge.parse_active("") is None
    assert edge.parse_active("# nothing here\n") is None


def test_damaged_state_is_an_error():
    with pytest.raises(ValueError, match="names color 'red'"):
        edge.parse_active(edge.render_live("blue", "v1").replace("=blue", "=red"))
    with pytest.raises(ValueError, match="names version 'v1 x'"):
        edge.parse_active(edge.render_live("blue", "v1").replace("=v1", "=v1 x"))


@pytest.mark.parametrize("version", ["", "v1;", "v1\ncolor=green", "../x", "a b", "v1\n"])
def test_versions_cannot_inject_state(version):
    with pytest.raises(ValueError, match="bad version"):
        edge.render_live("blue", version)


def write(tmp_path, cmd):
    """Run the edge's write script (the command the edge runs) with plain sh on a
    temporary state file, minus the confirmation from the edge."""
    path = tmp_path / "live"
    sh, flag, script, name, _path, lines, keys, _expect, text = cmd
    assert (sh, flag) == ("sh", "-c")
    return subprocess.run(
        ["sh", "-c", script, name, str(path), lines, keys, "", text], text=True, capture_output=True
    ), path


def test_a_switch_is_one_command_in_the_edge_with_the_file_as_an_argument():
    cmd = edge.switch_cmd(edge.render_live("green", "v2"), expect="color=green")
    assert (
        cmd[:2] == ["sh", "-c"]
        and cmd[4] == edge.LIVE_FILE
        and cmd[-2:] == ["color=green", edge.render_live("green", "v2")]
    )
    # no reload: the edge reads the file on the next request
    assert "nginx" not in cmd[2]
    assert edge.read_file_cmd(edge.LIVE_FILE) == [
        "sh",
        "-c",
        f"cat {edge.LIVE_FILE} 2>/dev/null || true",
    ]


def test_a_valid_live_file_is_renamed_into_place(tmp_path):
    proc, path = write(tmp_path, edge.switch_cmd(edge.render_live("green", "v2")))
    assert proc.returncode == 0, proc.stderr
    assert edge.parse_active(path.read_text()) == edge.Active("green", "v2")
    assert not path.with_name("live.new").exists()


@pytest.mark.parametrize(
    "text, why",
    [
        ("color=red\nversion=v1\n", "the line 'color=red' is not valid there"),
        ("color=blue\n", "it has no 'version=' line"),
        (
            "color=blue\nversion=v1\nproxy_pass http://evil;\n",
            "the line 'proxy_pass http://evil;' is not valid there",
        ),
        ('set $cg_color "blue";\n', "is not valid there"),
        ("color=blue\nversion=v1 x\n", "the line 'version=v1 x' is not valid there"),
    ],
)
def test_a_malformed_live_file_is_refused_and_the_old_one_stays(tmp_path, text, why):
    ok, path = write(tmp_path, edge.switch_cmd(edge.render_live("blue", "v1")))
    assert ok.returncode == 0
    proc, path = write(tmp_path, edge.switch_cmd(text))
    assert proc.returncode == 3 and why in proc.stderr
    assert edge.parse_active(path.read_text()) == edge.Active("blue", "v1")
    assert not path.with_name("live.new").exists()


def test_a_database_restart_holds_requests_as_long_as_the_database_is_awaited_a_write_freeze_for_the_hold():
    s = profiles.load(
        "development",
        root=config.project_root(),
        environ={"COLORGATE_HOLD_SECONDS": "5", "COLORGATE_HEALTH_TIMEOUT": "90"},
    )
    assert edge.freeze_hold(s) == 5 and edge.freeze_hold(s, database=True) == 90
    longer = profiles.load(
        "development",
        root=config.project_root(),
        environ={"COLORGATE_HOLD_SECONDS": "120", "COLORGATE_HEALTH_TIMEOUT": "90"},
    )
    assert edge.freeze_hold(longer, database=True) == 120


def test_freeze_file_holds_for_the_bound_and_empty_text_removes_it(tmp_path):
    cmd = edge.freeze_cmd(True, edge.render_freeze(5))
    assert cmd[4] == edge.FREEZE_FILE and cmd[-2] == "writes=frozen"
    assert edge.freeze_cmd(False, "")[-2] == "writes=open"
    proc, path = write(tmp_path, cmd)
    assert proc.returncode == 0 and "hold=5" in path.read_text().splitlines()
    proc, path = write(tmp_path, edge.freeze_cmd(True, "hold=soon\n"))
    assert proc.returncode == 3
    proc, path = write(tmp_path, edge.freeze_cmd(False, ""))
    assert proc.returncode == 0 and not path.exists()


def test_maintenance_file_carries_retry_and_message_and_refuses_markup(tmp_path):
    text = edge.render_maintenance(
        "Back at 14:00: upgrading the database", 120, "2026-11-30T12:00:00+00:00"
    )
    proc, path = write(tmp_path, edge.maintenance_cmd(text))
    assert proc.returncode == 0, proc.stderr
    assert edge.state_fields(path.read_text()) == {
        "retry": "120",
        "since": "2026-11-30T12:00:00+00:00",
        "message": "Back at 14:00: upgrading the database",
    }
    assert (
        edge.maintenance_cmd(text)[-2] == "maintenance=on"
        and edge.maintenance_cmd("")[-2] == "maintenance=off"
    )
    for message in ("<b>x</b>", 'say "hi"', "a\nb", "x" * 301, "back\\slash"):
        with pytest.raises(ColorgateError, match="the maintenance message must be one line"):
            edge.render_maintenance(message, 60, "t")
    # a file that did not come from here is refused on the edge too
    proc, _ = write(tmp_path, edge.maintenance_cmd("retry=60\nbypass=ab\nmessage=<script>\n"))
    assert proc.returncode == 3 and "is not valid there" in proc.stderr
    proc, path = write(tmp_path, edge.maintenance_cmd(""))
    assert proc.returncode == 0 and not path.exists()


def test_state_endpoint_parses():
    state = edge.parse_state(
        "color=blue\nversion=v3\nwrites=open\ninflight_blue=2\ninflight_green=0\n"
    )
    assert state == {
        "color": "blue",
        "version": "v3",
        "writes": "open",
        "inflight_blue": "2",
        "inflight_green": "0",
    }
    assert edge.state_cmd()[-1] == edge.STATE_URL
