"""The sample app's own step definitions, beside its features: Colorgate's gates load
every `*steps.py` here, with the step library's fixtures (gate_settings, client, http,
response)."""

from datetime import datetime, timezone

from pytest_bdd import then


@then("the note was made within the last minute")
def made_just_now(response):
    made = datetime.fromisoformat(response.json()["created_at"])
    age = (datetime.now(timezone.utc) - made.astimezone(timezone.utc)).total_seconds()
    assert -60 < age < 60, f"the note was made {age:.0f} s ago: {response.json()}"
