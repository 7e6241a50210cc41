"""Colors, and the edge's routing include file: rendering and reading it back."""

import pytest

from deploy import colors, edge
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
    text = edge.render_upstream("green", "v12")
    # the routing data is only the color and version: the routes come from the app's contract
    assert [line for line in text.splitlines() if not line.startswith("#")] == ['set $cg_color "green";', 'set $cg_version "v12";']
    assert edge.parse_active(text) == edge.Active("green", "v12")


def test_no_state_means_no_live_color():
    assert edge.parse_active("") is None
    assert edge.parse_active("# nothing here\n") is None


def test_damaged_state_is_an_error():
    with pytest.raises(ValueError, match="names color 'red'"):
        edge.parse_active(edge.render_upstream("blue", "v1").replace('"blue"', '"red"'))
    with pytest.raises(ValueError, match="names version 'v1 x'"):
        edge.parse_active(edge.render_upstream("blue", "v1").replace('"v1"', '"v1 x"'))


@pytest.mark.parametrize("version", ["", "v1;", 'v1" ; return 200 "x', "../x", "a b"])
def test_versions_cannot_inject_config(version):
    with pytest.raises(ValueError, match="bad version"):
        edge.render_upstream("blue", version)


def test_switch_is_one_exec_with_the_file_on_stdin():
    cmd = edge.switch_cmd("shop")
    assert cmd[:4] == ["docker", "exec", "-i", "shop-edge-1"]
    assert cmd[-2:] == [edge.STATE_FILE, ""]
    script = cmd[-4]
    # test before reload, restore on failure, reload only after the test passed
    assert script.index("nginx -t") < script.index("nginx -s reload")
    assert 'mv "$f.prev" "$f"' in script and "exit 3" in script
    # and returns only once new connections get the new configuration
    assert script.index("nginx -s reload") < script.index('grep -qix "$want"')
    assert edge.switch_cmd("shop", expect=edge.expect_color("green"))[-1] == "x-colorgate-edge-color: green"
    assert edge.read_state_cmd("shop")[:3] == ["docker", "exec", "shop-edge-1"]
