"""Apps nobody here wrote, each as its upstream documents it (its packaged code and its
documented compose file, only an x-colorgate block added), proven end to end like the
examples: up, the built-in gates and its own (a record written and read back through its
API), a gated deploy, switch, rollback, backup and verify."""

from __future__ import annotations

import os

import httpx
import pytest

from deploy import bases, config, edge, profiles, render
from deploy.data import db, verify
from deploy.edge import tls
from deploy.release import gates, releases
from deploy.target import facts, sockets

from .conftest import gates_strict_then_accepted, invoke, isolated_env, running_stack

ROOT = config.project_root()


@pytest.fixture(scope="module")
def miniflux(request):
    # the admin's password as Miniflux's documented compose file sets it, for its own gate;
    # that file keeps it in the environment, which the operator accepts (see the gates' test)
    env = {
        **isolated_env("mf"),
        "COLORGATE_APP": str(ROOT / "examples" / "miniflux"),
        "COLORGATE_GATE_ADMIN_PASSWORD": "test123",
        "COLORGATE_SECRETS_IN_ENV": "allow",
    }
    settings = profiles.load("development", environ={**os.environ, **env})
    bases.build_bases(settings, bases.missing_bases(settings))
    with running_stack(request, settings):
        yield env, settings


def api(settings, method: str, path: str, **kwargs) -> httpx.Response:
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        return c.request(method, path, auth=("admin", "test123"), **kwargs)


def test_miniflux_from_debian_runs_on_the_stacks_database_as_its_own_role(miniflux):
    env, s = miniflux
    states = facts.service_states(s)
    assert {n for n in states} == {"edge", "db", "miniflux_blue"} and states["miniflux_blue"].ready
    # the URL its compose file writes (with `secret`) is gone; Miniflux reads the stack's from the file
    environment = dict(
        e.partition("=")[::2]
        for e in facts.inspect(s, facts.container(s, "miniflux_blue"))["Config"]["Env"]
    )
    assert (
        "DATABASE_URL" not in environment
        and environment["DATABASE_URL_FILE"] == "/run/colorgate-secrets/database_url"
    )
    assert environment["RUN_MIGRATIONS"] == "1"
    # its database sits on Colorgate's internal network with it (the file names no networks)
    assert {n.name for n in sockets.service_networks(s, "db")} == {f"{s.project}_colorgate-db"}
    assert api(s, "GET", "/v1/me").json()["username"] == "admin"
    # render says what it replaced
    wired = render.wiring(s.app)
    assert (
        "!! services.miniflux.environment.DATABASE_URL: the value written there is removed: the app reads its URL from the file"
        in wired
    )
    assert (
        "!! services.db.environment.POSTGRES_PASSWORD: the value written there is replaced by Colorgate's"
        in wired
    )


def test_miniflux_passes_the_built_in_gates_and_its_own_write_and_read_back(miniflux):
    env, s = miniflux
    # its documented compose file writes the admin's password in the environment: the
    # Hardening gate names it (Miniflux reads ADMIN_PASSWORD_FILE too, the fix it suggests),
    # and passes once the operator accepts it (COLORGATE_SECRETS_IN_ENV=allow), as the docs' file stays as it is here
    refused, result = gates_strict_then_accepted(s)
    assert not refused.passed and "{'miniflux_blue': ['ADMIN_PASSWORD']}" in refused.first_failure()
    assert result.passed, result.first_failure()
    ran = {x.name for x in result.scenarios}
    assert {
        "A category written through the API is read back and removed",
        "The API knows the admin",
        "The candidate answers its health check",
        "The app reaches its database as its own role",
    } <= ran
    report = result.report.read_text()
    assert "test123" not in report and "test123" not in result.output  # the gate's secret is masked


def test_miniflux_deploys_rolls_back_and_backs_up_with_its_data(miniflux):
    env, s = miniflux
    made = api(s, "POST", "/v1/categories", json={"title": "kept across releases"})
    assert made.status_code == 201, made.text
    record = releases.deploy(s)
    assert (record.outcome, record.to_color, record.to_version) == ("switched", "green", "v2")
    titles = {c["title"] for c in api(s, "GET", "/v1/categories").json()}
    assert "kept across releases" in titles
    back = invoke("rollback", env=env)
    assert back.returncode == 0, back.stderr[-2000:]
    assert (edge.read_active(s).color, edge.read_active(s).version) == ("blue", "v1")
    again = invoke("switch", "--to", "green", env=env)
    assert again.returncode == 0 and "switched" in again.stdout, again.stderr[-2000:]
    manifest = db.backup(s)
    assert (
        manifest["counts"]["public.categories"] >= 2
        and "public.schema_version" in manifest["counts"]
    )
    assert verify.verify(s, manifest["name"]).usable
