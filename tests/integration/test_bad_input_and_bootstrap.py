"""Failures that need a real engine: a taken port, a start that cannot finish; and a
second bootstrap that changes nothing."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import time

from deploy import bases, bootstrap, config, errors, profiles
from deploy.target import facts, runner

from .conftest import invoke


def project_containers(settings) -> dict:
    return facts.service_states(settings)


def test_port_in_use_refuses_before_starting_anything(scratch):
    env, settings = scratch
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", settings.https_port))
        held.listen()
        proc = invoke("up", env=env)
    assert proc.returncode == errors.FAILED, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"colorgate: port {settings.https_port} on 127.0.0.1 is already in use: "
        "stop what uses it or set COLORGATE_HTTPS_PORT in .env.development.local"
    )
    assert project_containers(settings) == {}


def test_a_start_that_cannot_finish_is_torn_down(scratch, tmp_path):
    env, _ = scratch
    # the sample app, whose contract asks its backend for a path it does not serve
    # its images build from siblings
    shutil.copytree(config.project_root() / "examples", tmp_path / "examples")
    app = tmp_path / "examples" / "spa-api-postgres"
    compose = app / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace("backend: {path: /api/health,", "backend: {path: /api/missing,")
    )
    # the bound covers PostgreSQL's first start too (a new volume's initdb), which
    # under CI's load took over 3 s: short enough to keep the test quick, long enough for that
    env = {**env, "COLORGATE_HEALTH_TIMEOUT": "20", "COLORGATE_APP": str(app)}
    settings = profiles.load("development", environ={**os.environ, **env})
    proc = invoke("up", env=env)
    assert proc.returncode == errors.FAILED
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "colorgate: backend_blue failed its health check for 20s (/api/missing: "
    ), proc.stderr
    assert "stopping what this run started (volumes kept)" in proc.stderr
    assert project_containers(settings) == {}, "containers left behind"


def test_bootstrap_twice_changes_nothing_the_second_time(settings):
    bootstrap.bootstrap(settings)  # whatever the machine had, it is now complete
    plugin = bootstrap.PLUGIN_DIR / "docker-compose"
    plugin_mtime = plugin.stat().st_mtime if plugin.exists() else None
    base_ids = {
        b.name: bases.image_id(settings, b.tag(settings.base_source))
        for b in bases.needed_bases(settings)
    }

    outcome = dict(bootstrap.bootstrap(settings))

    assert outcome["compose plugin"].startswith("present")
    assert outcome["base images"] == "present"
    assert (plugin.stat().st_mtime if plugin.exists() else None) == plugin_mtime
    assert {
        b.name: bases.image_id(settings, b.tag(settings.base_source))
        for b in bases.needed_bases(settings)
    } == base_ids
    assert all(base_ids.values())


def test_a_base_image_older_than_the_setting_is_made_again_and_a_younger_one_is_left(settings):
    """A base the engine has (a copy of Colorgate's certbot base, under a tag of its own)
    is left while younger than COLORGATE_BASE_MAX_AGE and made again from Debian's mirror
    once older; the image it copied keeps its tag."""
    base = bases.BaseImage(f"cgtest-age-{secrets.token_hex(3)}", ("ca-certificates",))
    tag, source = base.tag(settings.base_source), bases.BASES["certbot"].tag(settings.base_source)
    runner.run(["docker", "image", "tag", source, tag])
    try:
        copied = bases.image_id(settings, tag)
        assert (
            bases.refresh_bases(dataclasses.replace(settings, base_max_age=7 * 86400), [base]) == []
        )
        time.sleep(1.5)
        assert bases.refresh_bases(dataclasses.replace(settings, base_max_age=1), [base]) == [
            base.name
        ]
        assert (
            bases.image_id(settings, tag) != copied
            and bases.base_ages(settings, [base])[base.name] < 120
        )
        assert bases.image_id(settings, source) == copied  # only the tag moved
        assert runner.run(
            ["docker", "run", "--rm", tag, "dpkg-query", "-W", "-f", "${Status}", "ca-certificates"]
        ).stdout == ("install ok installed")
    finally:
        runner.run(["docker", "image", "rm", "--force", tag], check=False)


def test_releases_on_a_stack_that_is_not_up_say_so(scratch):
    env, settings = scratch
    for task in (["deploy"], ["switch", "--to", "green"], ["rollback", "--no-gates"]):
        proc = invoke(*task, env=env)
        lines = proc.stderr.strip().splitlines()
        assert (
            proc.returncode == errors.FAILED
            and lines[-1] == "colorgate: the edge is not running: start the stack with `invoke up`"
        ), (task, proc.stderr)
    assert project_containers(settings) == {}


def test_db_move_refuses_a_database_client_with_no_way_out(scratch, tmp_path):
    env, settings = scratch
    app = tmp_path / "compose.yaml"
    app.write_text("""x-colorgate:
  colored: [web, worker]
  shared: [db]
  routes: [{path: /, to: web:80}]
  health: {web: /}
  database: db
services:
  web: {build: web, networks: [front, back]}
  worker: {build: web, networks: [back]}
  db: {image: postgres:16, networks: [back]}
networks:
  front: {}
  back: {internal: true}
""")
    proc = invoke(
        "db.move",
        "--to",
        "postgresql://admin:pw@db.example.com:5432/app",
        env={**env, "COLORGATE_APP": str(app)},
    )
    assert proc.returncode == errors.FAILED and proc.stderr.strip().splitlines()[-1] == (
        "colorgate: worker uses the database but is on internal networks only, so it could not reach a managed one: "
        "give it a network that is not internal in compose.yaml"
    ), proc.stderr
    assert project_containers(settings) == {}
