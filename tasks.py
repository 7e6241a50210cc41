"""Colorgate's command line (invoke). Argument parsing and output only: the work is
done in deploy/. Every task takes --profile (default: $COLORGATE_PROFILE or
development). Set COLORGATE_DEBUG=1 to see commands and tracebacks."""

from __future__ import annotations

import functools
import json
import logging
import os

from invoke import Exit, task

from deploy import bootstrap as _bootstrap
from deploy import config, runner, stack
from deploy.errors import ColorgateError

DEBUG = os.environ.get("COLORGATE_DEBUG") == "1"
logging.basicConfig(level=logging.DEBUG if DEBUG else logging.WARNING, format="%(message)s")


def operator_errors(fn):
    """Turn Colorgate errors into one line and exit code 1 (a traceback only in debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ColorgateError as exc:
            if DEBUG:
                raise
            raise Exit(f"colorgate: {runner.redact(str(exc))}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("colorgate: interrupted", code=130) from None

    return wrapper


@task(help={"profile": "env profile: development, staging or production"})
@operator_errors
def bootstrap(c, profile=None):
    """Check Docker, install the compose plugin and make the base images if missing."""
    settings = config.load(profile)
    for part, outcome in _bootstrap.bootstrap(settings):
        print(f"{part:<16} {outcome}")


@task(help={"profile": "env profile: development, staging or production"})
@operator_errors
def up(c, profile=None):
    """Start the edge, PostgreSQL and the live color (a no-op when all are running)."""
    settings = config.load(profile)
    _bootstrap.check_docker(settings)
    print(stack.format_status(stack.up(settings)))


@task(help={"profile": "env profile", "volumes": "also delete volumes: the database, certificates and routing state"})
@operator_errors
def down(c, profile=None, volumes=False):
    """Stop and remove the stack's containers; data volumes are kept unless --volumes."""
    settings = config.load(profile)
    _bootstrap.check_docker(settings)
    with runner.step("removing the stack" + (" and its volumes" if volumes else " (volumes kept)")):
        stack.down(settings, volumes=volumes)


@task(help={"profile": "env profile", "json": "print machine-readable JSON"})
@operator_errors
def status(c, profile=None, json_=False):
    """Active color, each service's state, health and version, and the URLs."""
    settings = config.load(profile)
    _bootstrap.check_docker(settings)
    data = stack.status(settings)
    print(json.dumps(data, indent=2) if json_ else stack.format_status(data))


@task(positional=["service"], help={"service": "a service (edge, postgres, backend_blue, ...) or all", "profile": "env profile", "follow": "keep following new lines", "tail": "lines per service"})
@operator_errors
def logs(c, service, profile=None, follow=False, tail=200):
    """Show container logs of SERVICE (e.g. backend_blue), or of every service with `all`."""
    settings = config.load(profile)
    _bootstrap.check_docker(settings)
    stack.logs(settings, None if service == "all" else service, follow=follow, tail=int(tail))
