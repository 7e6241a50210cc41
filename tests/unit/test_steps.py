"""The step library's pure parts: JSON paths in assertions, and values saved by one
step and used in a later one (no Docker; the steps themselves run in the gates)."""

from __future__ import annotations

import pytest

from steps.http import Http, json_path


def test_a_json_path_names_fields_and_list_items():
    body = {"entries": [{"title": "a", "tags": ["x", "y"]}, {"title": "b", "ok": True}], "total": 2}
    assert json_path(body, "total") == 2
    assert (
        json_path(body, "entries[1].title") == "b" and json_path(body, "entries.0.tags[-1]") == "y"
    )
    assert json_path([{"id": 7}], "[0].id") == 7 and json_path([{"id": 7}], "[-1].id") == 7
    # an item found by one of its fields, wherever it is in the list
    assert (
        json_path([{"id": 1, "title": "All"}, {"id": 9, "title": "gate 1f"}], "[title=gate 1f].id")
        == 9
    )
    assert json_path(body, "entries[ok=true].title") == "b"
    for absent in ("entries[2].title", "missing", "entries.title", "entries[title=c].title"):
        with pytest.raises(KeyError):
            json_path(body, absent)


def test_saved_values_fill_later_steps_and_a_missing_one_says_how_to_save_it():
    # new each scenario
    assert len(Http().saved["run"]) == 8 and Http().saved["run"] != Http().saved["run"]
    http = Http(saved={"note": "42"})
    assert http.fill("/api/notes/${note}") == "/api/notes/42"
    assert (
        http.fill('{"id": ${note}, "raw": "{braces} stay"}') == '{"id": 42, "raw": "{braces} stay"}'
    )
    with pytest.raises(
        AssertionError, match=r"^no value saved as 'feed': save one first .*; saved: \['note'\]$"
    ):
        http.fill("/v1/feeds/${feed}")
