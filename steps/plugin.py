"""Colorgate's pytest plugin (the `colorgate` entry point, so an app's repository has it
with the package): the gates' options and settings fixture, and the step library.

Gates verify whatever is live on the target selected by --profile (and the same
COLORGATE_* environment overrides the tasks honour). --target-color/--target-version
name what must be live (post) or what is about to be (pre); by default, what is live."""

from __future__ import annotations

import pytest

pytest_plugins = ["steps.http", "steps.common"]


def pytest_addoption(parser):
    group = parser.getgroup("colorgate")
    group.addoption(
        "--profile",
        default=None,
        help="env profile of the target (default: $COLORGATE_PROFILE or development)",
    )
    group.addoption(
        "--target-color",
        dest="target_color",
        default=None,
        help="color the gates check (default: the live one)",
    )
    group.addoption(
        "--target-version",
        dest="target_version",
        default=None,
        help="version the gates expect (default: the live one)",
    )


@pytest.fixture(scope="session")
def gate_settings(request):
    from deploy import profiles
    from deploy.errors import ColorgateError

    try:
        return profiles.load(request.config.getoption("--profile"))
    except ColorgateError as exc:
        pytest.exit(f"colorgate: {exc}", returncode=2)


# Name each gate's feature, scenario and failing step in its report (JUnit properties),
# so a failed gate says which scenario, which step and why.
def pytest_bdd_before_scenario(request, feature, scenario):
    request.node.user_properties += [("feature", feature.name), ("scenario", scenario.name)]


def pytest_bdd_step_error(request, feature, scenario, step, step_func, step_func_args, exception):
    request.node.user_properties.append(("failed_step", f"{step.keyword} {step.name}"))
