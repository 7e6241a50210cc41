"""MLflow's tracking server, an app nobody here wrote, from PyPI's packages and MLflow's
own compose file (only an x-colorgate block added, see examples/mlflow): an app that
cannot read its URL from a file, whose migration CLI takes the URL as an argument and
whose docs' file publishes ports and names its containers. Proven end to end like the
examples: up, the built-in gates and its own write-and-read-back, a gated deploy with a
verified backup before `mlflow db upgrade`, rollback, switch, backup and verify."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

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
def mlflow(request):
    # MLflow reads its URL from its environment only: the operator accepts it there
    env = {
        **isolated_env("ml"),
        "COLORGATE_APP": str(ROOT / "examples" / "mlflow"),
        "COLORGATE_SECRETS_IN_ENV": "allow",
    }
    settings = profiles.load("development", environ={**os.environ, **env})
    bases.build_bases(settings, bases.missing_bases(settings))
    with running_stack(request, settings):
        yield env, settings


def api(settings, method: str, path: str, **kwargs) -> httpx.Response:
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        return c.request(method, f"/api/2.0/mlflow/{path}", **kwargs)


def test_mlflow_from_pypi_runs_on_the_stacks_database_as_its_own_role(mlflow):
    env, s = mlflow
    states = facts.service_states(s)
    assert (
        set(states) == {"edge", "postgres", "mlflow_blue"}
        and states["mlflow_blue"].state == "running"
    )
    environment = dict(
        e.partition("=")[::2]
        for e in facts.inspect(s, facts.container(s, "mlflow_blue"))["Config"]["Env"]
    )
    url = urlsplit(environment["MLFLOW_BACKEND_STORE_URI"])
    # the driver its docs install (psycopg2), the app's own role, not the docs' mlflow:mlflow
    assert (url.scheme, url.username, url.hostname) == (
        "postgresql+psycopg2",
        s.app_db_user,
        "postgres",
    )
    assert url.password == s.app_db_password() != "mlflow"
    # the docs' file publishes 5000 and 5432 and names its containers: only the edge publishes
    assert {name for name, ports in sockets.published_ports(s).items() if ports} == {"edge"}
    assert facts.container(s, "mlflow_blue") == f"{s.project}-mlflow_blue-1"
    # not the docs' mlflow-postgres
    assert facts.inspect(s, facts.container(s, "postgres"))["Name"] == f"/{s.project}-postgres-1"
    wired = render.wiring(s.app)
    assert (
        "!! services.postgres.ports: left out: the database is reached by its clients only, on Colorgate's networks"
        in wired
    )
    assert (
        "!! services.mlflow.container_name: left out: compose names the containers per project and color"
        in wired
    )
    made = api(s, "POST", "experiments/create", json={"name": "kept across releases"})
    assert made.status_code == 200, made.text


def test_mlflow_passes_the_built_in_gates_and_its_own_write_and_read_back(mlflow):
    env, s = mlflow
    # the URL in its environment is what the Hardening gate refuses unless the operator accepts it
    refused, result = gates_strict_then_accepted(s)
    assert not refused.passed and "MLFLOW_BACKEND_STORE_URI" in refused.first_failure()
    assert result.passed, result.first_failure()
    assert {
        "An experiment created through the REST API is read back and deleted",
        "The candidate answers its health check",
        "The app reaches its database as its own role",
    } <= {x.name for x in result.scenarios}
    assert s.app_db_password() not in result.report.read_text() + result.output


def test_mlflow_deploys_with_a_backup_before_its_migration_rolls_back_and_keeps_its_data(mlflow):
    env, s = mlflow
    record = releases.deploy(s)
    assert (record.outcome, record.to_color, record.to_version) == ("switched", "green", "v2")
    # a backup taken and verified (restored into a scratch database) before `mlflow db upgrade`
    assert record.detail.startswith("backup ") and {"backup", "verify", "migrations"} <= set(
        record.timings
    )
    made = next(
        b
        for b in db.list_backups(s)
        if b["manifest"]["name"] == record.detail.removeprefix("backup ")
    )
    # Default and ours
    assert made["verify"]["usable"] and made["manifest"]["counts"]["public.experiments"] >= 2
    names = {
        e["name"]
        for e in api(s, "GET", "experiments/search", params={"max_results": 100}).json()[
            "experiments"
        ]
    }
    assert "kept across releases" in names
    back = invoke("rollback", env=env)
    assert back.returncode == 0, back.stderr[-2000:]
    assert (edge.read_active(s).color, edge.read_active(s).version) == ("blue", "v1")
    again = invoke("switch", "--to", "green", env=env)
    assert again.returncode == 0 and "switched" in again.stdout, again.stderr[-2000:]
    manifest = db.backup(s)
    assert (
        manifest["counts"]["public.experiments"] >= 2
        and "public.alembic_version" in manifest["counts"]
    )
    assert verify.verify(s, manifest["name"]).usable
