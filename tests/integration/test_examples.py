"""The other example apps, each proven end to end on a real engine: up, the gates (the
built-in ones and the app's own), a gated deploy, switch, rollback, and backup/verify
where there is a database. They differ from the default example in service names,
ports, health paths, migration tool and database, so the engine is tested as a tool
for apps it does not know."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import httpx
import pytest
import tenacity

from benchmarks.db_move import isolated, managed_postgres
from deploy import bases, config, edge, errors, profiles, urls
from deploy.data import db, verify
from deploy.edge import tls
from deploy.release import gates, releases
from deploy.target import dbfacts, facts

from .conftest import invoke, isolated_env, running_stack

ROOT = config.project_root()


def example(name: str, tag: str) -> tuple[dict, config.Settings]:
    env = {**isolated_env(tag), "COLORGATE_APP": str(ROOT / "examples" / name)}
    settings = profiles.load("development", environ={**os.environ, **env})
    bases.build_bases(settings, bases.missing_bases(settings))
    return env, settings


def gates_pass(settings, phase: str | None = None) -> list[str]:
    """Run `pytest features/` as an operator would; return the scenarios that ran."""
    result = gates.run_gates(settings, phase or "pre or post", *_live(settings))
    assert result.passed, result.first_failure()
    return [s.name for s in result.scenarios]


def _live(settings):
    active = edge.read_active(settings)
    return active.color, active.version


@pytest.fixture(scope="module")
def jobs(request):
    env, settings = example("web-worker-redis", "jobs")
    with running_stack(request, settings):
        yield env, settings


def post_job(settings, text: str) -> int:
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        r = c.post("/jobs", data={"text": text})
        assert r.status_code == 303, r.text
        return int(r.headers["x-job"])


def job(settings, number: int) -> dict:
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        return c.get(f"/jobs/{number}").json()


@tenacity.retry(stop=tenacity.stop_after_delay(20), wait=tenacity.wait_fixed(0.2), reraise=True)
def done_by(settings, number: int) -> str:
    who = job(settings, number)["done_by"]
    assert who, f"job {number} is not done yet"
    return who


def test_the_jobs_app_runs_with_its_worker_redis_and_alembic(jobs):
    env, s = jobs
    states = facts.service_states(s)
    assert {n for n in states} == {"edge", "db", "cache", "web_blue", "worker_blue"}
    assert (
        states["worker_blue"].ready
        and states["worker_blue"].version == "v1"
        and states["worker_blue"].ports == []
    )
    # the unrouted worker does the jobs the routed web service queues
    assert done_by(s, post_job(s, "first")) == "blue v1"
    # Alembic ran in the candidate's image: the status command says head
    assert dbfacts.pending_migrations(s, "blue") is False
    ran = gates_pass(s)
    assert (
        "The jobs page is served through the edge" in ran
        and "Every route is answered by the expected color and version" in ran
    )


def test_the_jobs_app_deploys_rolls_back_and_backs_up(jobs):
    env, s = jobs
    record = releases.deploy(s)
    assert (record.outcome, record.to_color, record.to_version) == ("switched", "green", "v2")
    # both colors' workers take jobs now (the queue is shared); the green web serves
    with gates.edge_client(s, tls.read_local_ca(s)) as c:
        assert c.get("/").headers["x-colorgate-color"] == "green"
    numbers = [post_job(s, f"after deploy {i}") for i in range(6)]
    assert {done_by(s, n) for n in numbers} <= {"blue v1", "green v2"}

    back = invoke("rollback", env=env)
    assert back.returncode == 0, back.stderr[-2000:]
    assert _live(s) == ("blue", "v1")
    again = invoke("switch", "--to", "green", env=env)
    assert again.returncode == 0 and "switched" in again.stdout, again.stderr[-2000:]

    manifest = db.backup(s)
    assert manifest["counts"]["public.jobs"] >= 7 and "public.alembic_version" in manifest["counts"]
    assert verify.verify(s, manifest["name"]).usable


def test_the_jobs_app_moves_to_a_managed_database(jobs):
    """db.move --mode replicate works on an app it does not know: another database service
    name, another URL variable (JOBS_DATABASE_URL), Alembic's table, a worker that uses the
    database. No worker writes where it would be lost: jobs queued while the move runs are
    all done, on the new database, and the new color's workers start only once traffic moved."""
    env, s = jobs
    before = job(s, post_job(s, "before the move"))
    old = _live(s)[0]
    posted, stop = [], threading.Event()

    def keep_posting():
        while not stop.is_set():
            with contextlib.suppress(AssertionError, httpx.HTTPError):
                posted.append(post_job(s, "during the move"))
            time.sleep(0.2)

    with managed_postgres(s, f"{s.image_prefix}db:latest") as managed:
        poster = threading.Thread(target=keep_posting)
        poster.start()
        try:
            relay = {
                k: v for k, v in isolated("x").items() if k.startswith("COLORGATE_MOVE_")
            }  # on docker0
            # its target is the example's own PostgreSQL 15, which cannot check the relay against system CAs: told so
            relay["COLORGATE_MOVE_RELAY_SSLMODE"] = "require"
            moved = invoke(
                "db.move",
                "--mode",
                "replicate",
                env={**env, **relay, "COLORGATE_MOVE_TO": managed.url},
            )
        finally:
            stop.set()
            poster.join()
        assert moved.returncode == 0, moved.stderr[-3000:]
        live = _live(s)
        out = moved.stderr
        assert (
            "relay TLS: the target does not check the relay's certificate (COLORGATE_MOVE_RELAY_SSLMODE=require)"
            in out
        )
        assert f"pausing {old}'s workers (worker_{old})" in out
        assert out.index("ok writes open again") < out.index(
            f"-> starting {live[0]}'s workers (worker_{live[0]})"
        )
        # the new color's web and worker use the managed database; old jobs came along
        states = facts.service_states(s)
        assert {states[f"{name}_{live[0]}"].database for name in ("web", "worker")} == {
            urls.shown_url(managed.url)
        }
        assert states[f"worker_{old}"].state == "exited"
        assert managed.sql(f"SELECT text FROM jobs WHERE id = {before['id']}") == "before the move"
        assert managed.sql("SELECT count(*) FROM alembic_version") == "1"
        assert len(posted) > 10
        all_done_on(managed, posted)
        after = post_job(s, "after the move")
        assert done_by(s, after) == f"{live[0]} {live[1]}"
        assert managed.sql(f"SELECT done_by FROM jobs WHERE id = {after}") == f"{live[0]} {live[1]}"
        assert edge.read_database_record(s)["url"] == urls.shown_url(managed.url)


@tenacity.retry(stop=tenacity.stop_after_delay(20), wait=tenacity.wait_fixed(0.5), reraise=True)
def all_done_on(managed, numbers: list[int]) -> None:
    ids = ",".join(map(str, numbers))
    found, done = managed.sql(
        f"SELECT count(*), count(done_by) FROM jobs WHERE id IN ({ids})"
    ).split("|")
    assert (int(found), int(done)) == (len(numbers), len(numbers)), (
        f"of {len(numbers)} jobs: {found} on the new database, {done} done"
    )


@pytest.fixture(scope="module")
def site(request):
    env, settings = example("static-site", "site")
    with running_stack(request, settings):
        yield env, settings


def test_the_static_site_releases_with_no_database(site):
    env, s = site
    assert set(facts.service_states(s)) == {"edge", "site_blue"}
    ran = gates_pass(s)
    assert "An unknown page is not found" in ran
    record = releases.deploy(s)
    assert (record.outcome, record.to_version) == ("switched", "v2")
    with gates.edge_client(s, tls.read_local_ca(s)) as c:
        r = c.get("/about/")
        assert r.status_code == 200 and (
            r.headers["x-colorgate-color"],
            r.headers["x-colorgate-version"],
        ) == ("green", "v2")
        # the site sends its own security headers: its CSP passes (the contract says it owns it), the
        # edge's nosniff and HSTS replace the site's; once each (the Hardening gate passed on them too)
        h = r.headers
        assert h.get_list("content-security-policy") == [
            "default-src 'self'; frame-ancestors 'none'"
        ], h
        assert h.get_list("x-content-type-options") == ["nosniff"] and h.get_list(
            "strict-transport-security"
        ) == ["max-age=63072000"]
    back = invoke("rollback", "--no-gates", env=env)
    assert back.returncode == 0 and _live(s) == ("blue", "v1")
    # the database tasks say in one line that there is no database
    for task in (
        ["db.backup"],
        ["db.backups"],
        ["db.verify", "latest"],
        ["db.migrate"],
        ["db.move", "--to", "postgresql://a:b@h/d"],
    ):
        proc = invoke(*task, env=env)
        lines = proc.stderr.strip().splitlines()
        assert (
            proc.returncode == errors.BAD_INPUT
            and lines[-1].startswith("colorgate: the app (")
            and "declares no database" in lines[-1]
        ), (task, proc.stderr)
