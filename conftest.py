"""pytest in Colorgate's checkout. The gates' options (--profile, --target-color,
--target-version), their settings fixture and the step library come from Colorgate's
pytest plugin (steps/plugin.py, installed with the package as the `colorgate` entry
point), as they do in an app's repository; the tests' own fixtures are in tests/."""
