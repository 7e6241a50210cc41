"""Gated blue/green releases on a real stack: deploy, refusals, automatic switch-back,
rollback, the lock, routing-file safety, and the gates failing when they should."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tenacity
import yaml
from python_on_whales import DockerClient

from deploy import apply, config, contract, edge, errors, profiles, render, stack
from deploy.edge import locking, tls
from deploy.errors import CommandError, StackError
from deploy.release import canary, gates, releases
from deploy.target import compose, connections, facts, runner, targets

from .conftest import INVOKE, invoke, isolated_env, running_stack


@pytest.fixture(scope="module")
def env():
    return isolated_env("rel")


@pytest.fixture(scope="module")
def settings(env):
    return profiles.load("development", environ={**os.environ, **env})


@pytest.fixture(scope="module")
def rstack(request, settings):
    with running_stack(request, settings):
        yield settings


def api(settings, path="/api/version"):
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        return c.get(path)


def live(settings):
    return edge.read_active(settings)


def broken_app(tmp_path, settings, old: str = "", new: str = ""):
    """A copy of the app with one line changed, as an operator's bad release would be."""
    copy = tmp_path / "app"
    shutil.copytree(settings.app_dir, copy)
    if old:
        app = copy / "backend" / "app.py"
        text = app.read_text()
        assert old in text
        app.write_text(text.replace(old, new, 1))
    return dataclasses.replace(settings, app=contract.load(copy), app_path=str(copy))


def assert_traffic_untouched(settings, before):
    """Still routed to the same color and version, and answering from it."""
    assert live(settings) == before
    assert api(settings).json() == {"color": before.color, "version": before.version}


def test_deploy_moves_traffic_to_the_new_version(rstack):
    s = rstack
    record = releases.deploy(s)
    assert (record.outcome, record.from_color, record.to_color, record.to_version) == (
        "switched",
        "blue",
        "green",
        "v2",
    )
    assert live(s) == edge.Active("green", "v2")
    assert api(s).json() == {"color": "green", "version": "v2"}
    # the previous color keeps running, ready for a rollback
    assert facts.service_states(s)["backend_blue"].up and facts.passes_healthcheck(
        s, "backend_blue"
    )
    last = edge.read_history(s)[-1]
    assert last["outcome"] == "switched" and {g["phase"] for g in last["gates"]} == {"pre", "post"}
    assert all(g["outcome"] == "passed" for g in last["gates"]) and len(last["gates"]) >= 10


def test_deploying_the_live_version_is_a_no_op_that_says_so_and_fails(rstack, env):
    before = len(edge.read_history(rstack))
    assert releases.deploy(rstack, version="v2").outcome == "no-op"
    assert len(edge.read_history(rstack)) == before
    # from the command line (a CI job that deployed nothing must not pass as a release)
    proc = invoke("deploy", "--version", "v2", env=env)
    assert proc.returncode == errors.NOTHING_TO_DO and proc.stderr.strip().splitlines()[-1] == (
        "colorgate: v2 is already live on green: nothing to do (--force deploys it again)"
    ), proc.stderr
    assert len(edge.read_history(rstack)) == before


def changed_contract(tmp_path, settings) -> Path:
    """A copy of the examples whose app has a route more (the edge's configuration), an
    app network made internal, and a shared service with another environment."""
    # its PostgreSQL builds from ../
    shutil.copytree(settings.app_dir.parent, tmp_path / "examples")
    path = tmp_path / "examples" / settings.app_dir.name / "docker-compose.yml"
    data = contract.read_compose(path)
    data["x-colorgate"]["routes"].append({"path": "/docs/", "to": "frontend:8080"})
    data["networks"]["web"] = {"internal": True}
    data["services"]["postgres"]["environment"]["TZ"] = "UTC"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path.parent


def test_a_deploy_refuses_a_changed_contract_before_anything_starts_and_traffic_never_notices(
    rstack, env, tmp_path
):
    """A release starts only its candidate: what the contract changed beside the colors
    (the edge's routes, a network, a shared service) is named, nothing is created,
    recreated or reconnected, and clients that never retry lose nothing meanwhile."""
    from .test_switching import NoRetryClients

    before = live(rstack)
    ids = {
        name: facts.inspect(rstack, facts.container(rstack, name))["Id"]
        for name in ("edge", "postgres", *rstack.app.color_services(before.color))
    }
    app = changed_contract(tmp_path, rstack)
    with NoRetryClients(rstack, tls.read_local_ca(rstack)) as clients:
        time.sleep(0.5)
        proc = invoke("deploy", env={**env, "COLORGATE_APP": str(app)})
        time.sleep(0.5)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == errors.BAD_INPUT and last.startswith(
        "colorgate: the contract or the settings changed what runs beside the colors ("
    ), proc.stderr
    for phrase in (
        "the edge's routes would be reloaded",
        "postgres would be recreated",
        "the network web would be recreated",
        "invoke apply",
    ):
        assert phrase in last, last
    assert clients.failed == [] and clients.ok > 50, (
        f"{len(clients.failed)} of {clients.ok + len(clients.failed)} lost: {clients.failed[:5]}"
    )
    assert {name: facts.inspect(rstack, facts.container(rstack, name))["Id"] for name in ids} == ids
    assert_traffic_untouched(rstack, before)
    # not recorded as a release: refused before one began
    assert edge.read_history(rstack)[-1]["to_version"] == before.version
    # the contract as it runs changes nothing beside the candidate (the other tests deploy it)
    assert (
        apply.changes(
            rstack,
            "blue" if before.color == "green" else "green",
            facts.running_versions(facts.service_states(rstack)),
        )
        == []
    )


def test_switch_refuses_unknown_and_stopped_colors(rstack, env):
    proc = invoke("switch", "--to", "purple", env=env)
    assert (
        proc.returncode == errors.BAD_INPUT
        and proc.stderr.strip() == "colorgate: unknown color 'purple': use one of blue, green"
    )
    runner.run(compose.compose_cmd(rstack, "stop", "frontend_blue"), env=rstack.compose_env())
    try:
        proc = invoke("switch", "--to", "blue", env=env)
        assert proc.returncode == errors.FAILED
        assert (
            proc.stderr.strip()
            .splitlines()[-1]
            .startswith("colorgate: blue is not running and healthy (frontend_blue exited")
        )
        assert live(rstack) == edge.Active("green", "v2")
    finally:
        runner.run(compose.compose_cmd(rstack, "start", "frontend_blue"), env=rstack.compose_env())
        stack.wait_ready(rstack, ["frontend_blue"])


def test_a_second_release_refuses_while_the_lock_is_held(rstack, env):
    with locking.lock(rstack, "deploy"):
        proc = invoke("deploy", env=env)
        assert proc.returncode == errors.LOCKED
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("colorgate: the target is locked by deploy by ")
        assert "since 20" in line and line.endswith("or if it died, retry with --break-lock")
        before = facts.service_states(rstack)
        removing = invoke("down", "--volumes", env=env)  # nor is the stack removed under a release
        assert removing.returncode == errors.LOCKED and "locked by deploy by " in removing.stderr
        assert facts.service_states(rstack) == before
        # its heartbeat is fresh: it runs
        breaking = invoke("switch", "--to", "green", "--break-lock", env=env)
        assert (
            breaking.returncode == errors.LOCKED
            and "--break-lock breaks only a lock whose holder died" in breaking.stderr
        )
        assert edge.read_lock(rstack).holder["command"] == "deploy"
    # a lock left behind by a run that died (no heartbeat for longer than the bound) is stale,
    # and can be broken explicitly, on record
    edge.in_edge(rstack, edge.lock_cmd('{"command": "deploy"}', "dead-run"))
    edge.in_edge(
        rstack,
        [
            "touch",
            "-d",
            f"@{int(time.time()) - edge.STALE_SECONDS - 5}",
            f"{edge.LOCK_DIR}/heartbeat",
        ],
    )
    stale = invoke("rollback", env=env)
    assert (
        stale.returncode == errors.LOCKED
        and "colorgate: the target's release lock is stale: " in stale.stderr
    )
    assert (
        "last heartbeat 3" in stale.stderr
        and "see `invoke status` and `invoke history`, then retry with --break-lock" in stale.stderr
    )
    assert "(STALE: its run died?" in invoke("status", env=env).stdout
    proc = invoke("switch", "--to", "green", "--break-lock", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "breaking the release lock of an unknown holder" in proc.stderr
    broken = [r for r in edge.read_history(rstack) if r["action"] == "break-lock"][-1]
    assert (
        broken["outcome"] == "broken"
        and broken["operator"]
        and "last heartbeat" in broken["detail"]
    )


def test_switches_never_reload_nginx_and_a_bad_routing_file_never_lands(rstack):
    edge_name = edge.edge_container(rstack)
    children = "cat /proc/$(cat /tmp/nginx.pid)/task/*/children"

    def workers() -> list[str]:
        return runner.run(["docker", "exec", edge_name, "sh", "-c", children]).stdout.split()

    before_state, before_workers = live(rstack), workers()
    with pytest.raises(CommandError) as err:
        edge.in_edge(rstack, edge.switch_cmd("color=blue\nversion=v1\nno_such_directive on;\n"))
    assert err.value.returncode == 3 and "no_such_directive" in err.value.stderr
    assert live(rstack) == before_state, "the refused routing file replaced the live one"
    assert api(rstack).json()["color"] == before_state.color
    # the edge reads the live color per request: a switch there and back keeps the same workers
    releases.rollback(rstack, use_gates=False)
    releases.rollback(rstack, use_gates=False)
    assert live(rstack) == before_state and workers() == before_workers, (
        "nginx was reloaded by a switch"
    )


def test_rollback_returns_to_the_previous_version(rstack):
    assert live(rstack).color == "green"
    record = releases.rollback(rstack)
    assert (record.action, record.outcome, record.to_color, record.to_version) == (
        "rollback",
        "switched",
        "blue",
        "v1",
    )
    assert api(rstack).json() == {"color": "blue", "version": "v1"}
    # and forward again, without gates (the emergency path)
    assert releases.rollback(rstack, use_gates=False).to_version == "v2"
    assert api(rstack).json() == {"color": "green", "version": "v2"}


def test_an_unhealthy_candidate_never_receives_traffic(rstack, tmp_path):
    s = dataclasses.replace(
        broken_app(
            tmp_path,
            rstack,
            "return self.send_json(200, status)",
            "return self.send_json(500, status)",
        ),
        health_timeout=15,
    )
    before = live(s)
    with pytest.raises(StackError, match="waiting for .*backend_blue.* to become healthy"):
        releases.deploy(s, version="v3-unhealthy")
    assert_traffic_untouched(s, before)
    last = edge.read_history(s)[-1]
    assert (last["to_version"], last["outcome"]) == ("v3-unhealthy", "failed") and last[
        "gates"
    ] == []
    assert facts.service_states(s)["backend_blue"].state == "exited", (
        "the failed candidate was left running"
    )


def test_a_deploy_that_never_went_live_uses_up_no_version_number(rstack, tmp_path):
    """The next deploy takes the number of one that failed before its switch, and builds
    that version anew from its own code (not the failed one's images)."""
    broken = dataclasses.replace(
        broken_app(
            tmp_path,
            rstack,
            "return self.send_json(200, status)",
            "return self.send_json(500, status)",
        ),
        health_timeout=10,
    )
    with pytest.raises(StackError):
        releases.deploy(broken)
    failed = edge.read_history(rstack)[-1]
    assert failed["outcome"] == "failed" and failed["to_version"].startswith("v")
    record = releases.deploy(rstack)
    assert (record.outcome, record.to_version) == ("switched", failed["to_version"])
    assert api(rstack).json() == {"color": record.to_color, "version": failed["to_version"]}
    assert api(rstack, "/api/health").json()["database"] == "ok"  # the good code, made again


def test_a_post_gate_failure_switches_back_by_itself(rstack, tmp_path):
    s = broken_app(
        tmp_path,
        rstack,
        "    def do_GET(self):\n",
        "    def do_GET(self):\n        if self.headers.get('X-Forwarded-Proto'):\n            return self.send_json(500, {'error': 'broken behind a proxy'})\n",
    )
    before = live(s)
    with pytest.raises(errors.GateFailed) as err:
        releases.deploy(s, version="v4-broken-route")
    assert f"traffic is back on {before.color} ({before.version})" in str(err.value)
    assert_traffic_untouched(s, before)
    last = edge.read_history(s)[-1]
    assert last["outcome"] == "rolled back"
    failed = [g for g in last["gates"] if g["outcome"] == "failed"]
    assert failed and all(g["phase"] == "post" for g in failed)
    pre = [g["outcome"] for g in last["gates"] if g["phase"] == "pre"]
    assert pre and set(pre) == {"passed"}


def test_a_release_turned_away_is_stopped_marked_and_never_rolled_back_to(rstack, env):
    """The release the post gates just turned away (the test before) stopped once
    drained; `status` and `history` say so, and a rollback refuses in one line."""
    last = edge.read_history(rstack)[-1]
    rejected = last["to_color"]
    assert last["rejected"] == f"{rejected} v4-broken-route" and "stop_rejected" in last["timings"]
    states = facts.service_states(rstack)
    assert all(states[name].state != "running" for name in rstack.app.color_services(rejected))
    status = invoke("status", env=env)
    assert (
        f"rejected: {rejected} (v4-broken-route), turned away by its deploy of " in status.stdout
    ), status.stdout
    assert f"[rejected: {rejected} v4-broken-route]" in invoke("history", env=env).stdout
    proc = invoke("rollback", env=env)
    assert proc.returncode == errors.FAILED and proc.stderr.strip().splitlines()[-1].startswith(
        f"colorgate: {rejected} was stopped after its deploy of "
    ), proc.stderr
    assert_traffic_untouched(rstack, live(rstack))


def test_a_failing_migration_stops_the_deploy_before_traffic_moves(rstack, tmp_path):
    s = broken_app(tmp_path, rstack)  # the same app...
    # ...with a migration that fails
    (tmp_path / "app" / "backend" / "migrations" / "900_broken.sql").write_text(
        "ALTER TABLE notes ADD COLUMN oops integer;\nSELECT no_such_function();\n"
    )
    before = live(s)
    with pytest.raises(CommandError, match="database migrations failed"):
        releases.deploy(s, version="v5-bad-migration")
    assert_traffic_untouched(s, before)
    last = edge.read_history(s)[-1]
    assert (last["to_version"], last["outcome"]) == (
        "v5-bad-migration",
        "failed",
    ) and "backup" in last["timings"]
    assert facts.service_states(s)[f"backend_{last['to_color']}"].state == "exited"
    # the failed migration ran in one transaction: nothing of it stayed behind
    columns = runner.run(
        [
            "docker",
            "exec",
            f"{s.project}-postgres-1",
            "psql",
            "-At",
            "-U",
            s.postgres_user,
            "-d",
            s.postgres_db,
            "-c",
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'",
        ]
    ).stdout.split()
    assert "oops" not in columns and "tags" in columns


def test_a_restarted_live_container_is_found_at_its_new_address(rstack):
    s = rstack
    color = live(s).color
    service = f"backend_{color}"
    engine = DockerClient()  # the tests' own view of the engine (the engine is local here)
    network = f"{s.project}_colorgate"
    old_ip = (
        engine.container.inspect(f"{s.project}-{service}-1")
        .network_settings.networks[network]
        .ip_address
    )
    runner.run(compose.compose_cmd(s, "stop", service), env=s.compose_env())
    # something else takes the old address while the backend is down
    squatter = engine.container.run(
        f"{s.image_prefix}backend:v1",
        ["sleep", "60"],
        detach=True,
        networks=[network],
        name=f"{s.project}-squatter",
        remove=True,
    )
    try:
        runner.run(compose.compose_cmd(s, "start", service), env=s.compose_env())
        stack.wait_ready(s, [service])
        new_ip = (
            engine.container.inspect(f"{s.project}-{service}-1")
            .network_settings.networks[network]
            .ip_address
        )
        assert new_ip != old_ip

        # one request may meet the edge's cached old address (a connect that times out, 504): the next one must not
        @tenacity.retry(
            stop=tenacity.stop_after_delay(20), wait=tenacity.wait_fixed(0.5), reraise=True
        )
        def healthy_through_edge():
            r = api(s, "/api/health")
            assert r.status_code == 200 and r.json()["color"] == color, r.text

        healthy_through_edge()
    finally:
        squatter.remove(force=True)


def run_gates_cli(env, *args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pytest", "features/", "-q", "-p", "no:cacheprovider", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=config.project_root(),
    )


def test_gates_fail_on_a_certificate_for_the_wrong_name_or_expired(rstack, env, tmp_path):
    from tests.certs import make_ca, make_leaf

    edge_name = edge.edge_container(rstack)
    keep = {
        name: runner.run(["docker", "exec", edge_name, "cat", f"/etc/colorgate/tls/{name}"]).stdout
        for name in ("local-ca.pem", "live/fullchain.pem", "live/privkey.pem")
    }

    def install(files):
        for name, pem in files.items():
            runner.run(
                ["docker", "exec", "-i", edge_name, "sh", "-c", f"cat > /etc/colorgate/tls/{name}"],
                input=pem,
            )
        runner.run(["docker", "exec", edge_name, "nginx", "-s", "reload", "-c", edge.NGINX_CONF])
        time.sleep(0.5)  # let the new workers take over (reload is asynchronous)

    ca_cert, ca_key = make_ca()
    try:
        cert, key = make_leaf(ca_cert, ca_key, "wrong.example", days=90)
        install({"local-ca.pem": ca_cert, "live/fullchain.pem": cert, "live/privkey.pem": key})
        proc = run_gates_cli(env, "-m", "tls")
        assert proc.returncode == 1 and "Hostname mismatch" in proc.stdout, proc.stdout[-1500:]

        cert, key = make_leaf(ca_cert, ca_key, "localhost", days=-1)
        install({"live/fullchain.pem": cert, "live/privkey.pem": key})
        proc = run_gates_cli(env, "-m", "tls")
        assert proc.returncode == 1 and "certificate has expired" in proc.stdout, proc.stdout[
            -1500:
        ]

        cert, key = make_leaf(ca_cert, ca_key, "localhost", days=5)
        install({"live/fullchain.pem": cert, "live/privkey.pem": key})
        proc = run_gates_cli(env, "-m", "tls")
        assert proc.returncode == 1 and "minimum 14" in proc.stdout, proc.stdout[-1500:]
    finally:
        install(keep)
    assert run_gates_cli(env, "-m", "tls").returncode == 0


def test_gates_fail_when_the_database_port_is_published(rstack, env, tmp_path):
    from .conftest import free_port

    port = free_port()
    override = tmp_path / "publish-db.yml"
    # (a port published from an internal-only network is silently not published, so
    # the mistake needs both halves: a routable network and the port)
    override.write_text(
        f'services:\n  postgres:\n    networks: [data, web]\n    ports: ["127.0.0.1:{port}:5432"]\n'
    )
    base = compose.compose_cmd(rstack)
    cmd = [*base, "--file", str(override), "up", "--detach", "--no-build", "postgres"]
    versions = facts.running_versions(facts.service_states(rstack))
    runner.run(cmd, env=compose.compose_env(rstack, versions))
    try:
        stack.wait_ready(rstack, ["postgres"])
        proc = run_gates_cli(env, "-m", "post")
        assert proc.returncode == 1, proc.stdout[-1500:]
        assert "services publishing host ports" in proc.stdout and "postgres" in proc.stdout
        assert (
            "PostgreSQL sits on internal networks only" in proc.stdout or "internal" in proc.stdout
        )
    finally:
        runner.run(
            [*base, "up", "--detach", "--no-build", "postgres"],
            env=compose.compose_env(rstack, versions),
        )
        stack.wait_ready(rstack, ["postgres"])
    assert run_gates_cli(env).returncode == 0


def test_the_hardening_gate_fails_on_a_weakened_container_and_passes_again_when_it_is_undone(
    rstack, env, tmp_path
):
    live_color = live(rstack).color
    backend = rstack.app.copy_name("backend", live_color)
    override = tmp_path / "weaken.yml"
    # ... and the database URL back in its environment, as an app that reads only DATABASE_URL has it
    override.write_text(
        f"services:\n  {backend}:\n    cap_add: [NET_RAW]\n    read_only: false\n"
        '    security_opt: ["no-new-privileges:false"]\n    user: root\n'
        f"    environment:\n      DATABASE_URL: ${{{render.database_var(live_color)}}}\n"
    )
    base = compose.compose_cmd(rstack)
    versions = facts.running_versions(facts.service_states(rstack))
    runner.run(
        [*base, "--file", str(override), "up", "--detach", "--no-build", backend],
        env=compose.compose_env(rstack, versions),
    )
    try:
        stack.wait_ready(rstack, [backend])
        weak = targets.of(rstack).confinements(rstack, [backend])[backend]
        assert (
            weak.as_root
            and weak.cap_add == ("NET_RAW",)
            and not weak.read_only
            and not weak.no_new_privileges
        )
        # pre and post scenarios, on the live color
        proc = run_gates_cli(env, "features/hardening.feature")
        assert proc.returncode == 1, proc.stdout[-1500:]
        assert (
            "not locked down" in proc.stdout
            and "capabilities added: NET_RAW" in proc.stdout
            and "runs as root" in proc.stdout
        )
        # the example reads its URL from a file already: no advice to, only the way to accept it
        assert (
            f"secrets in container environments (docker inspect shows them): {{'{backend}': ['DATABASE_URL']}}: or accept it"
            in proc.stdout
        )
        assert rstack.postgres_password not in proc.stdout
        accepted = run_gates_cli(
            {**env, "COLORGATE_SECRETS_IN_ENV": "allow"},
            "features/hardening.feature",
            "-k",
            "secrets",
        )
        assert accepted.returncode == 0, accepted.stdout[-1500:]
    finally:
        runner.run(
            [*base, "up", "--detach", "--no-build", backend],
            env=compose.compose_env(rstack, versions),
        )
        stack.wait_ready(rstack, [backend])
    assert run_gates_cli(env, "features/hardening.feature").returncode == 0


def test_the_health_gate_fails_on_a_color_its_restart_policy_keeps_bringing_back(rstack, env):
    """A container killed (for memory, or a crash) and restarted by `restart:` answers its
    health check between crashes; the Health gate reads the engine's restart count."""
    backend = rstack.app.copy_name("backend", live(rstack).color)
    name = facts.container(rstack, backend)
    # from the host: not a `docker kill`, which counts as a stop
    os.kill(facts.inspect(rstack, name)["State"]["Pid"], signal.SIGKILL)
    base = compose.compose_cmd(rstack)
    versions = facts.running_versions(facts.service_states(rstack))
    try:
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(30), wait=tenacity.wait_fixed(0.2), reraise=True
        ):
            with attempt:
                assert facts.service_states(rstack)[backend].restarted.startswith(
                    "restarted 1 time, the last "
                )
        stack.wait_ready(rstack, [backend])
        proc = run_gates_cli(env, "features/health.feature", "-m", "post")
        assert (
            proc.returncode == 1
            and f"{backend} restarted 1 time, the last " in proc.stdout
            and ": it exited" in proc.stdout
        ), proc.stdout[-1500:]
    finally:  # a new container: its restart count starts again at 0
        runner.run(
            [*base, "up", "--detach", "--no-build", "--force-recreate", backend],
            env=compose.compose_env(rstack, versions),
        )
        stack.wait_ready(rstack, [backend])
    assert run_gates_cli(env, "features/health.feature").returncode == 0


def test_secrets_are_read_only_files_and_in_no_containers_environment(rstack):
    states = facts.service_states(rstack)
    running = [name for name, st in states.items() if st.state == "running"]
    assert {"postgres", "edge"} <= set(running)
    # what docker inspect shows: no container's environment holds the password or a URL with it
    assert not {
        n: c.secret_env
        for n, c in targets.of(rstack).confinements(rstack, running).items()
        if c.secret_env
    }
    for name, _ in states.items():
        if name in running:
            env_text = "\n".join(
                connections.engine(
                    rstack.docker_host, "inspect_container", facts.container(rstack, name)
                )["Config"]["Env"]
            )
            assert rstack.postgres_password not in env_text, name
    backend = rstack.app.copy_name("backend", live(rstack).color)
    shown = runner.run(
        [
            "docker",
            "exec",
            facts.container(rstack, backend),
            "sh",
            "-c",
            'stat -c "%a %U" "$DATABASE_URL_FILE" && touch "$DATABASE_URL_FILE" 2>/dev/null || echo read-only',
        ],
        env=rstack.docker_env(),
    ).stdout.split("\n")
    assert shown[:2] == ["444 root", "read-only"], shown
    # the database read its password from its file: the app (URL from its file) is healthy on it
    assert (
        runner.run(
            [
                "docker",
                "exec",
                "-i",
                facts.container(rstack, "postgres"),
                "sh",
                "-c",
                'test -z "${POSTGRES_PASSWORD:-}" && '
                'test "$(cat "$POSTGRES_PASSWORD_FILE")" = "$(cat)"',
            ],
            input=rstack.postgres_password,
            env=rstack.docker_env(),
            check=False,
        ).returncode
        == 0
    )


def test_the_hardening_gate_fails_when_the_app_does_not_own_its_database_until_up_hands_it_over(
    rstack, env
):
    pg = [
        "docker",
        "exec",
        "-i",
        facts.container(rstack, "postgres"),
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        rstack.postgres_user,
        "-d",
        rstack.postgres_db,
    ]
    runner.run(
        pg,
        input=f'ALTER DATABASE "{rstack.postgres_db}" OWNER TO "{rstack.postgres_user}";',
        env=rstack.docker_env(),
    )
    proc = run_gates_cli(env, "-m", "pre", "features/hardening.feature")
    assert (
        proc.returncode == 1
        and f"is owned by {rstack.postgres_user}, not the app's role {rstack.app_db_user}: run `invoke up`"
        in proc.stdout
    )
    assert invoke("up", env=env).returncode == 0
    assert run_gates_cli(env, "features/hardening.feature").returncode == 0


def test_history_and_status_show_the_releases(rstack, env):
    from deploy.colors import other

    target = other(live(rstack).color)
    proc = invoke("deploy", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"deploy: {other(target)} " in proc.stdout
        and f"-> {target} " in proc.stdout
        and ": switched in " in proc.stdout
    )
    assert "PASS  Upstream active" in proc.stderr and "pre gates on" in proc.stderr
    records = json.loads(invoke("history", "--json", env=env).stdout)
    last = records[-1]
    assert (last["action"], last["to_color"], last["outcome"]) == ("deploy", target, "switched")
    assert {
        "started",
        "operator",
        "from_color",
        "from_version",
        "to_version",
        "gates",
        "duration_s",
    } <= set(last)
    assert {r["outcome"] for r in records} <= {
        "switched",
        "refused",
        "rolled back",
        "failed",
        "broken",
    }  # none left "running"
    status = json.loads(invoke("status", "--json", env=env).stdout)
    assert status["last_release"] == last
    text = invoke("history", env=env).stdout
    assert (
        text.splitlines()[0].split()[:3] == ["STARTED", "ACTION", "FROM"]
        and "deploy" in text.splitlines()[-1]
    )


class UserLoad:
    """Users of the live app, at a steady rate through the edge, each request a user's
    (`user=N`): what each got, when, and from which color."""

    def __init__(self, settings, rate: float = 30, new_users: bool = False):
        import threading

        self.settings, self.rate, self.seen, self.new_users = settings, rate, [], new_users
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with gates.edge_client(self.settings, tls.read_local_ca(self.settings)) as c:
            n = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    # a user the edge has not seen: no cookie, its own user agent
                    if self.new_users:
                        c.cookies.clear()
                    r = c.get(
                        f"/api/slow?ms=0&user={n}",
                        headers={"User-Agent": f"user-{n}"} if self.new_users else None,
                    )
                    self.seen.append(
                        (time.time(), r.status_code, r.headers.get("x-colorgate-color", ""))
                    )
                except Exception as exc:  # noqa: BLE001 - counted as a failed request
                    self.seen.append((time.time(), 0, repr(exc)))
                n += 1
                time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def __enter__(self):
        self.thread.start()
        # the old color's figures before the switch: the analysis compares against them
        time.sleep(3)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


ANALYSIS = dict(analysis_intervals=2, analysis_seconds=4, analysis_min_requests=20)


def test_a_release_that_fails_real_users_while_its_gates_pass_is_switched_back_by_the_analysis(
    rstack, env, tmp_path, capsys
):
    """Its health checks and gates pass; one user in five gets a 500 from it. The
    analysis of real traffic after the switch sees it in its first interval and
    switches back by itself; the history keeps each interval's figures."""
    bad = dataclasses.replace(
        broken_app(
            tmp_path,
            rstack,
            '        if url.path == "/api/slow":\n',
            '        if url.path == "/api/slow" and int((query.get("user") or ["1"])[0]) % 5 == 0:\n'
            '            return self.send_json(500, {"error": "broken for real users"})\n'
            '        if url.path == "/api/slow":\n',
        ),
        **ANALYSIS,
    )
    before = live(bad)
    with UserLoad(bad) as load:
        with pytest.raises(errors.GateFailed) as err:
            releases.deploy(bad, version="v6-fails-users", keep_rejected=True)
    message = str(err.value)
    assert "the analysis of" in message and "traffic failed at interval 1: 5xx" in message, message
    assert f"traffic is back on {before.color} ({before.version})" in message
    assert_traffic_untouched(bad, before)
    last = edge.read_history(bad)[-1]
    assert (last["to_version"], last["outcome"]) == ("v6-fails-users", "rolled back")
    assert {g["outcome"] for g in last["gates"] if g["phase"] in ("pre", "post")} == {
        "passed"
    }  # the gates saw nothing
    analysis = last["analysis"]
    assert analysis["verdict"] == "failed" and analysis["baseline"]["error_ratio"] == 0
    first = analysis["intervals"][0]
    assert (
        first["verdict"] == "failed"
        and 0.1 < first["figures"]["error_ratio"] < 0.3
        and first["figures"]["requests"] >= 20
    )
    failed = [t for t, status, _ in load.seen if status >= 500 or status == 0]
    switched_for = last["timings"]["analysis"] if "analysis" in last["timings"] else None
    with capsys.disabled():
        print(
            f"\n  bad release: {len(failed)} of {len(load.seen)} user requests failed between the switch and the flip-back "
            f"(analysis {switched_for}s)"
        )
    assert 0 < len(failed) < len(load.seen)
    assert all(color == before.color for t, status, color in load.seen if t > time.time() - 0.5)
    # the release report: a picture of it, and the record in full
    assert Path(last["report"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [m["what"] for m in last["marks"]] == [
        f"switch to {last['to_color']}",
        f"switch back to {before.color}",
    ]
    # kept running for debugging (--keep-rejected), but traffic does not go back to it without --force
    assert (
        last["rejected"] == f"{last['to_color']} v6-fails-users"
        and "stop_rejected" not in last["timings"]
    )
    assert facts.service_states(bad)[bad.app.copy_name("backend", last["to_color"])].up
    refused = invoke("switch", "--to", last["to_color"], env=env)
    assert (
        refused.returncode == errors.FAILED
        and f"{last['to_color']} holds v6-fails-users, which its deploy of " in refused.stderr
    ), refused.stderr
    assert_traffic_untouched(bad, before)
    shown = invoke("history", "--show", "1", env=env).stdout
    assert (
        shown.startswith(
            f"deploy {before.color} {before.version} -> {last['to_color']} v6-fails-users: rolled back"
        )
        and "  analysis after the switch: failed" in shown
        and "    interval 1: " in shown
        and f"  report: {last['report']}\n" in shown + "\n"
    ), shown


def test_good_releases_pass_the_analysis_under_the_same_load_with_no_false_alarm(rstack):
    good = dataclasses.replace(rstack, **ANALYSIS)
    for version in ("v7-good", "v7b-good"):  # repeated: each judged against the one before it
        before = live(good)
        with UserLoad(good) as load:
            record = releases.deploy(good, version=version)
        assert record.outcome == "switched" and live(good).version == version
        analysis = edge.read_history(good)[-1]["analysis"]
        assert analysis["verdict"] == "passed" and [
            i["verdict"] for i in analysis["intervals"]
        ] == ["passed", "passed"]
        assert all(i["figures"]["errors"] == 0 for i in analysis["intervals"])
        assert not [s for _, s, _ in load.seen if s != 200]
        assert before.version != version


# --- canary releases --------------------------------------------------------------------


CANARY_ENV = {"COLORGATE_ANALYSIS_INTERVALS": "1", "COLORGATE_ANALYSIS_MIN_REQUESTS": "1"}


def deploy_in_background(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`invoke deploy ARGS` as an operator starts it, running while the test looks on."""
    return subprocess.Popen(
        [INVOKE, "deploy", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.project_root(),
    )


def wait_for_canary(settings, percent: int, proc: subprocess.Popen, seconds: float = 180) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = canary.read(settings)
        if found and found["percent"] == percent:
            return found
        if proc.poll() is not None:
            raise AssertionError(
                f"the deploy ended before its canary reached {percent}%: {proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"no canary at {percent}% within {seconds:.0f}s")


def first_visits(settings, users: int) -> dict[str, tuple[str, str]]:
    """Each user's first request (no cookie yet): the color that answered and the bucket cookie the edge gave."""
    seen = {}
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        for n in range(users):
            c.cookies.clear()
            r = c.get("/api/version", headers={"User-Agent": f"canary-user-{n}"})
            assert r.status_code == 200, r.text
            seen[f"canary-user-{n}"] = (
                r.headers["x-colorgate-color"],
                r.cookies.get(canary.COOKIE) or "",
            )
    return seen


def returning_visits(
    settings, seen: dict[str, tuple[str, str]], times: int = 2
) -> dict[str, set[str]]:
    """Each user comes back with its cookie (from another address, as a phone changes networks: the cookie decides)."""
    colors = {}
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        for user, (_, bucket) in seen.items():
            c.cookies.clear()
            c.cookies.set(canary.COOKIE, bucket)
            colors[user] = {
                c.get("/api/version", headers={"User-Agent": f"{user}-elsewhere"}).headers[
                    "x-colorgate-color"
                ]
                for _ in range(times)
            }
    return colors


def forged_visits(settings, users: list[str], found: dict) -> set[str]:
    """Users the edge put on the live color claim the bucket that lands on the canary:
    as a bare number, and signed with a key that is not the edge's. Returns the colors
    that answered them."""
    landing = (100 - found["offset"]) % 100
    colors = set()
    with gates.edge_client(settings, tls.read_local_ca(settings)) as c:
        for user in users:
            for value in (str(landing), f"{landing}.{'A' * 16}"):
                c.cookies.clear()
                c.cookies.set(canary.COOKIE, value)
                r = c.get("/api/version", headers={"User-Agent": user})
                assert re.fullmatch(
                    r"[0-9]{1,2}\.[A-Za-z0-9_-]{16}", r.cookies.get(canary.COOKIE) or ""
                ), r.headers  # a signed one
                colors.add(r.headers["x-colorgate-color"])
    return colors


def test_a_10_percent_canary_sends_about_10_percent_of_distinct_users_keeps_each_on_one_color_and_an_abort_returns_all(
    rstack, env, capsys
):
    before = live(rstack)
    proc = deploy_in_background(
        {**env, **CANARY_ENV, "COLORGATE_ANALYSIS_SECONDS": "120"},
        "--canary",
        "10",
        "--version",
        "v8-canary",
    )
    try:
        found = wait_for_canary(rstack, 10, proc)
        assert found["color"] != before.color and found["version"] == "v8-canary"
        status = invoke("canary.status", env=env)
        assert (
            f"canary: {found['color']} (v8-canary) gets 10% of users" in status.stdout
            and "deploy: " in status.stdout
        ), status.stdout
        assert (
            f"canary: {found['color']} (v8-canary) gets 10% of users"
            in invoke("status", env=env).stdout
        )
        seen = first_visits(rstack, 300)
        on_canary = [u for u, (color, _) in seen.items() if color == found["color"]]
        # each got a signed bucket
        assert all(
            re.fullmatch(r"[0-9]{1,2}\.[A-Za-z0-9_-]{16}", bucket) for _, bucket in seen.values()
        )
        share = len(on_canary) / len(seen)
        with capsys.disabled():
            print(
                f"\n  10% canary: {len(on_canary)} of {len(seen)} distinct users ({share:.1%}) got {found['color']}"
            )
        assert 0.04 <= share <= 0.18, share
        again = returning_visits(rstack, seen)
        assert all(again[u] == {seen[u][0]} for u in seen), [
            u for u in seen if again[u] != {seen[u][0]}
        ][:5]  # each stays
        assert forged_visits(rstack, [u for u in seen if u not in on_canary][:20], found) == {
            before.color
        }  # a forged bucket is ignored
        aborted = invoke("canary.abort", env=env)
        assert (
            aborted.returncode == 0 and f"everyone gets {before.color} again" in aborted.stdout
        ), aborted.stderr
        # at once: the next request
        back = returning_visits(rstack, {u: seen[u] for u in on_canary}, times=1)
        assert all(colors == {before.color} for colors in back.values()), back
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (
        proc.returncode == errors.REFUSED
        and "the canary was aborted" in err.strip().splitlines()[-1]
    ), err[-2000:]
    assert_traffic_untouched(rstack, before)
    states = facts.service_states(rstack)
    assert {s.state for s in states.values() if s.color == found["color"]} <= {
        "exited",
        "created",
    }  # the candidate stopped
    assert canary.read(rstack) is None and edge.read_history(rstack)[-1]["outcome"] == "refused"


def test_a_canary_goes_step_by_step_and_a_promote_switches_everyone_gated(rstack, env):
    before = live(rstack)
    proc = deploy_in_background(
        {**env, **CANARY_ENV, "COLORGATE_ANALYSIS_SECONDS": "3"},
        "--canary",
        "10,50",
        "--version",
        "v9-canary",
    )
    try:
        wait_for_canary(rstack, 50, proc)  # 10% passed its gates and its interval, on its own
        promoted = invoke("canary.promote", env=env)
        assert promoted.returncode == 0 and "the deploy switches everyone to" in promoted.stdout, (
            promoted.stderr
        )
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    now = live(rstack)
    assert now.version == "v9-canary" and now.color != before.color and canary.read(rstack) is None
    last = edge.read_history(rstack)[-1]
    assert last["outcome"] == "switched"
    steps = last["analysis"]["canary"]
    assert [s["percent"] for s in steps] == [10, 50] and steps[0]["verdict"] == "passed", steps
    # promoted, unless its 3 s interval ended first
    assert steps[1]["verdict"] in (
        "promoted",
        "passed",
    )
    assert {g["phase"] for g in last["gates"]} == {"pre", "post"} and all(
        g["outcome"] == "passed" for g in last["gates"]
    )
    assert invoke("canary.status", env=env).stdout.startswith(
        f"no canary: everyone gets {now.color} (v9-canary)"
    )
    assert "no canary runs: nothing to abort" in invoke("canary.abort", env=env).stdout


def test_a_canary_that_fails_its_users_is_aborted_by_its_analysis_and_the_stable_color_never_moves(
    rstack, tmp_path
):
    """Four requests in five of the canary's users get a 500 (so that however few of them
    reach it in the interval, the analysis sees errors); its gates (user 1) pass. Users are
    new ones each time (no cookie), so about a tenth of them reach the canary."""
    bad = dataclasses.replace(
        broken_app(
            tmp_path,
            rstack,
            '        if url.path == "/api/slow":\n',
            '        if url.path == "/api/slow" and int((query.get("user") or ["1"])[0]) % 5 != 1:\n'
            '            return self.send_json(500, {"error": "broken for real users"})\n'
            '        if url.path == "/api/slow":\n',
        ),
        analysis_intervals=1,
        analysis_seconds=6,
        analysis_min_requests=3,
    )
    before = live(bad)
    with UserLoad(bad, new_users=True) as load:
        with pytest.raises(errors.GateFailed) as err:
            releases.deploy(bad, version="v10-bad-canary", canary=(10,))
    assert "the analysis of" in str(err.value) and "traffic failed at interval 1: 5xx" in str(
        err.value
    ), err.value
    assert_traffic_untouched(bad, before)
    assert canary.read(bad) is None
    last = edge.read_history(bad)[-1]
    assert (last["to_version"], last["outcome"]) == ("v10-bad-canary", "refused")
    step = last["analysis"]["canary"][0]
    assert step["verdict"] == "failed" and step["intervals"][0]["baseline"]["errors"] == 0
    assert [m["what"] for m in last["marks"]] == ["canary 10%", "canary ended"] and Path(
        last["report"]
    ).is_file()
    on_canary = [s for _, s, color in load.seen if color != before.color]
    assert on_canary and len(on_canary) < len(load.seen) / 4  # a share of users, not everyone
    assert all(color == before.color for t, _, color in load.seen if t > time.time() - 0.5)
