"""Options and fixtures shared by the gates (features/) and the tests (tests/).

Gates verify whatever is live on the target selected by --profile (and the same
COLORGATE_* environment overrides the tasks honour)."""

from __future__ import annotations

import pytest

pytest_plugins = ["steps.common"]


def pytest_addoption(parser):
    group = parser.getgroup("colorgate")
    group.addoption("--profile", default=None, help="env profile of the target (default: $COLORGATE_PROFILE or development)")
    group.addoption("--target-color", dest="target_color", default=None, help="color the gates expect to be live (default: whatever is live)")


@pytest.fixture(scope="session")
def gate_settings(request):
    from deploy import config
    from deploy.errors import ColorgateError

    try:
        return config.load(request.config.getoption("--profile"))
    except ColorgateError as exc:
        pytest.exit(f"colorgate: {exc}", returncode=2)
