"""Collects the app's own gate features: the *.feature files in the `features/`
directory next to its compose file, written with the step library in steps/, and the
app's own step definitions, when it has them: every `*steps.py` file there (pytest-bdd's
`@given`/`@when`/`@then`, with the library's fixtures: gate_settings, client, http,
response), loaded into this module as pytest-bdd expects of step definitions."""

import importlib.util

from pytest_bdd import scenarios

from steps.common import app_features_dir

_app_features = app_features_dir()
if _app_features:
    for _path in sorted(_app_features.glob("*steps.py")):
        _spec = importlib.util.spec_from_file_location(f"app_steps_{_path.stem}", _path)
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        globals().update(
            {name: value for name, value in vars(_module).items() if not name.startswith("__")}
        )
    scenarios(str(_app_features))
