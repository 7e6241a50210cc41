"""Collects the app's own gate features: the *.feature files in the `features/`
directory next to its compose file, written with the step library in steps/."""

from pytest_bdd import scenarios

from steps.common import app_features_dir

_app_features = app_features_dir()
if _app_features:
    scenarios(str(_app_features))
