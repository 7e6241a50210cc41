"""Commands as data: what would run, checked without running it."""

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from deploy import bases, bootstrap, config, errors, images, profiles, registry, views
from deploy.errors import ColorgateError, CommandError, EngineLost, NotFound, PortInUse
from deploy.target import compose, facts, runner, targets


@pytest.fixture
def settings():
    s = profiles.load(
        "development", root=config.project_root(), environ={"COLORGATE_PROJECT": "shop"}
    )
    yield s
    # compose_cmd renders the compose file it names
    shutil.rmtree(s.compose_file.parent, ignore_errors=True)


def test_compose_cmd_names_project_and_file(settings):
    cmd = compose.compose_cmd(settings, "up", "--detach", "edge")
    assert cmd[:4] == ["docker", "compose", "--project-name", "shop"]
    # the compose file rendered from the app's, and the app's directory for its build contexts
    assert cmd[cmd.index("--file") + 1] == str(
        settings.compose_file
    ) and settings.compose_file.parts[-2:] == ("shop", "compose.yml")
    # derived data stays out of the checkout
    assert config.project_root() not in settings.compose_file.parents
    assert cmd[cmd.index("--project-directory") + 1] == str(
        config.project_root() / "examples" / "spa-api-postgres"
    )
    assert cmd[-3:] == ["up", "--detach", "edge"]


def test_compose_env_pins_each_color_version_and_carries_the_secret(settings):
    env = compose.compose_env(settings, {"blue": "v3", "green": "v4"})
    assert env["COLORGATE_BLUE_VERSION"] == "v3" and env["COLORGATE_GREEN_VERSION"] == "v4"
    assert env["POSTGRES_PASSWORD"] == settings.postgres_password
    assert "DOCKER_HOST" not in env
    assert env["COLORGATE_BASE_PYTHON"] == bases.BASES["python"].tag(settings.base_source)


def test_remote_engine_goes_into_the_environment():
    s = profiles.load(
        "development",
        root=config.project_root(),
        environ={"COLORGATE_DOCKER_HOST": "ssh://deploy@vps"},
    )
    assert s.docker_env() == {"DOCKER_HOST": "ssh://deploy@vps", "COLORGATE_SSH_PERSIST": "60"}
    assert s.compose_env()["DOCKER_HOST"] == "ssh://deploy@vps"
    assert not bootstrap.local_engine(s)


def test_mmdebstrap_cmd_includes_packages_and_security_updates():
    base = bases.BASES["python"]
    cmd = bases.mmdebstrap_cmd(base, Path("/tmp/x.tar"), "http://deb.debian.org/debian")
    assert cmd[:3] == ["mmdebstrap", "--quiet", "--variant=minbase"]
    assert "--include=python3,python3-psycopg2,ca-certificates" in cmd
    assert cmd[-3:] == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd


def test_base_tag_changes_with_what_goes_in():
    mirror = "http://deb.debian.org/debian"
    a = bases.BaseImage("x", ("nginx-light",))
    b = bases.BaseImage("x", ("nginx-light", "curl"))
    assert a.tag(mirror) == bases.BaseImage("x", ("nginx-light",)).tag(mirror)
    assert a.tag(mirror) != b.tag(mirror) != b.tag("http://other/debian")
    assert a.tag(mirror).startswith("colorgate-base/x:bookworm-")


def test_bases_older_than_the_setting_or_missing_are_made_again_and_status_says_how_old_they_are():
    day = 86400
    assert (
        profiles.load("development", root=config.project_root(), environ={}).base_max_age == 7 * day
    )
    for text, seconds in (("7d", 7 * day), ("12h", 43200), ("30m", 1800), ("45s", 45), ("0", 0)):
        assert (
            profiles.load(
                "development", root=config.project_root(), environ={"COLORGATE_BASE_MAX_AGE": text}
            ).base_max_age
            == seconds
        )
    for bad in ("7", "a week", "-1d", "7w"):
        with pytest.raises(
            ColorgateError,
            match=r"COLORGATE_BASE_MAX_AGE .* should be an age such as 7d, 12h, 30m or 45s",
        ):
            profiles.load(
                "development", root=config.project_root(), environ={"COLORGATE_BASE_MAX_AGE": bad}
            )
    ages = {"nginx": 8 * day, "postgres": 2 * day, "certbot": None}
    assert bases.stale(ages, 7 * day) == ["nginx", "certbot"] and bases.stale(ages, 0) == [
        "certbot"
    ]
    status = {
        "project": "p",
        "profile": "development",
        "engine": "local",
        "active": None,
        "services": [],
        "urls": {},
        "bases": {"ages": {"nginx": 8 * day, "postgres": 3600.0}, "max_age": 7 * day},
    }
    assert (
        "base images: nginx 8 days, postgres 1 hour; nginx to be made again (the next deploy does, or "
        "`invoke bootstrap --refresh`)"
    ) in views.format_status(status).splitlines()
    status["bases"]["ages"]["nginx"] = day
    assert (
        "base images: nginx 24 hours, postgres 1 hour old (made again after 7 days)"
        in views.format_status(status).splitlines()
    )


def test_a_base_made_from_debians_image_has_the_same_packages_sources_and_exclusions_and_its_own_tag():
    from deploy import config

    file = bases.base_dockerfile(
        bases.BASES["redis"], "registry.example.com/debian", "http://mirror.example/debian"
    )
    assert file.startswith("FROM registry.example.com/debian:bookworm-slim\n")
    assert "--no-install-recommends redis-server ca-certificates " in file
    assert (
        "deb http://mirror.example/debian bookworm-updates main\\n" in file
        and "path-exclude=/usr/share/doc/*\\n" in file
    )
    made = {
        bases: profiles.load(
            "development", root=config.project_root(), environ={"COLORGATE_BASES": bases}
        )
        for bases in ("mmdebstrap", "image")
    }
    # the tags every machine made so far
    assert made["mmdebstrap"].base_source == made["mmdebstrap"].debian_mirror
    assert bases.BASES["redis"].tag(made["image"].base_source) != bases.BASES["redis"].tag(
        made["mmdebstrap"].base_source
    )


def test_import_cmd():
    assert bases.import_cmd(Path("/t/a.tar"), "colorgate-base/a:1")[-2:] == [
        "/t/a.tar",
        "colorgate-base/a:1",
    ]


@pytest.mark.parametrize(
    "tags, nxt", [([], "v1"), (["latest"], "v1"), (["v1", "v9", "v10", "x2"], "v11")]
)
def test_next_version(tags, nxt):
    assert images.next_version(tags) == nxt


def test_runner_raises_with_command_exit_code_and_masked_output():
    runner.add_secret("hunter2-secret")
    with pytest.raises(CommandError) as err:
        runner.run(["sh", "-c", "echo token hunter2-secret >&2; exit 7"], what="the probe")
    assert err.value.returncode == 7
    assert str(err.value) == "the probe failed (exit 7): token ********"


def test_runner_missing_program_is_a_command_error():
    with pytest.raises(CommandError, match="command not found"):
        runner.run(["colorgate-no-such-program"])


def test_what_the_docker_cli_says_is_absent_is_not_found_and_any_other_failure_is_not(tmp_path):
    """A stand-in `docker` on PATH prints what the real CLI prints; the runner's reading
    of it is under test: "No such ..." is an answer (absent), anything else a failure."""
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\necho "$1" >&2\nexit 1\n')
    fake.chmod(0o755)
    with pytest.raises(NotFound):
        runner.run([str(fake), "Error response from daemon: No such container: shop-edge-1"])
    with pytest.raises(NotFound):
        runner.run([str(fake), "Error: No such object: shop-web_blue-1"])
    for said in (
        "error during connect: Get http://docker/v1.41/containers/json: EOF",
        "Cannot connect to the Docker daemon",
    ):
        with pytest.raises(CommandError) as err:
            runner.run([str(fake), said])
        assert not isinstance(err.value, NotFound), said
    with pytest.raises(CommandError) as err:  # another program's "No such" is its own business
        runner.run(["sh", "-c", "echo 'No such container: x' >&2; exit 1"])
    assert not isinstance(err.value, NotFound)


def test_an_engine_that_cannot_be_asked_is_never_read_as_one_where_nothing_runs(tmp_path):
    """Its socket gone (as when the SSH connection drops): every read raises EngineLost
    (exit 6, one line), which no `except CommandError` takes for "absent"."""
    gone = f"unix://{tmp_path}/engine.sock"
    s = profiles.load(
        "development",
        root=config.project_root(),
        environ={"COLORGATE_PROJECT": "shop", "COLORGATE_DOCKER_HOST": gone},
    )
    for read in (
        lambda: facts.service_states(s),
        lambda: facts.inspect(s, "shop-edge-1"),
        lambda: targets.of(s).confinements(s, ["edge"]),
    ):
        with pytest.raises(EngineLost) as err:
            read()
        assert not isinstance(err.value, CommandError) and err.value.exit_code == errors.UNREACHABLE
        assert str(err.value).startswith(
            f"cannot ask the Docker engine ({gone}) while "
        ) and "\n" not in str(err.value)


def test_port_in_use_is_refused_with_the_key_to_change():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        env = {"COLORGATE_HTTP_PORT": str(free), "COLORGATE_HTTPS_PORT": str(port)}
        s = profiles.load("development", root=config.project_root(), environ=env)
        with pytest.raises(
            PortInUse,
            match=rf"^port {port} on 127.0.0.1 is already in use: .* COLORGATE_HTTPS_PORT in \.env\.development\.local$",
        ):
            bootstrap.check_ports_free(s)


def test_status_formatting_without_containers():
    text = views.format_status(
        {
            "project": "p",
            "profile": "development",
            "engine": "local",
            "active": None,
            "services": [],
            "urls": {"https": "https://x/"},
        }
    )
    assert "active color: none" in text and "run `invoke up`" in text


def test_bootstrap_makes_only_the_bases_colorgate_and_the_app_need(settings):
    """Colorgate's own (edge, dbtools, certbot) and those the app's compose file names."""
    assert [b.name for b in bases.needed_bases(settings)] == [
        "nginx",
        "postgres",
        "certbot",
        "python",
    ]
    jobs = profiles.load(
        "development",
        root=config.project_root(),
        environ={"COLORGATE_APP": str(config.project_root() / "examples" / "web-worker-redis")},
    )
    assert [b.name for b in bases.needed_bases(jobs)] == [
        "nginx",
        "postgres",
        "certbot",
        "pyweb",
        "redis",
    ]


def test_status_text_names_project_engine_color_and_each_service():
    data = {
        "project": "shop",
        "profile": "development",
        "engine": "local",
        "active": {"color": "green", "version": "v3"},
        "writes_frozen": False,
        "urls": {"https": "https://localhost:8443/"},
        "services": [
            {
                "service": "api_green",
                "color": "green",
                "state": "running",
                "health": "healthy",
                "version": "v3",
                "ports": [],
                "database": "local",
            },
            {
                "service": "edge",
                "color": None,
                "state": "running",
                "health": "healthy",
                "version": "",
                "ports": ["127.0.0.1:8443->8443/tcp"],
                "database": "",
            },
        ],
    }
    lines = views.format_status(data).splitlines()
    assert lines[:3] == [
        "project shop (profile development, engine local)",
        "active color: green (v3)",
        "database: local",
    ]
    assert any(line.split()[:4] == ["api_green", "running", "healthy", "v3"] for line in lines)
    # a release turned away is said so until a release replaces it
    data["rejected"] = {
        "blue": {
            "version": "v4",
            "action": "deploy",
            "started": "2026-12-02T11:00:00+00:00",
            "outcome": "rolled back",
            "running": False,
        }
    }
    assert views.format_status(data).splitlines()[3] == (
        "rejected: blue (v4), turned away by its deploy of 2026-12-02T11:00:00 (rolled back); stopped: traffic does not go to it without --force"
    )
    # a container its restart policy keeps bringing back is named under its line
    data["services"][0]["restarted"] = "restarted 2 times, the last 14s ago: it exited"
    assert (
        "  !! api_green restarted 2 times, the last 14s ago: it exited"
        in views.format_status(data).splitlines()
    )


def test_registry_errors_name_the_cause_and_a_401_inside_a_name_is_not_a_refusal():
    server = "127.0.0.1:5000"
    missing = (
        "Error response from daemon: manifest for 127.0.0.1:5000/cgtestreg24017326d/backend:v99 not found: "
        "manifest unknown: manifest unknown"
    )
    assert registry.explain_registry_error(server, missing).startswith(
        "an image is not in the registry 127.0.0.1:5000"
    )
    refused = 'Error response from daemon: Head "https://127.0.0.1:5000/v2/app/manifests/v1": 401 Unauthorized'
    assert "refused the credentials" in registry.explain_registry_error(server, refused)
    assert "refused the credentials" in registry.explain_registry_error(
        server, "error: received unexpected HTTP status: 401"
    )


# captured from `docker compose --dry-run up --detach --no-build --no-deps` (Compose 2.40) on a
# stack whose network `data` became internal and whose postgres changed, with a new `cache`
DRY_RUN = """\
 DRY-RUN MODE -  Container cg-postgres-1  Stopping
 DRY-RUN MODE -  Container cg-postgres-1  Stopped
 DRY-RUN MODE -  Network cg_data  Removed
 DRY-RUN MODE -  Container cg-edge-1  Running
 DRY-RUN MODE -  Container cg-postgres-1  Recreate
 DRY-RUN MODE -  Container cg-cache-1  Creating
 DRY-RUN MODE -  Container cg-backend_green-1  Recreate
 DRY-RUN MODE -  Container cg-postgres-1  Recreated
 DRY-RUN MODE -  Container 0de44b3498c8_cg-backend_green-1  Starting
 DRY-RUN MODE -  Container cg-cache-1  Created
 DRY-RUN MODE -  Network cg_web  Creating
"""


def test_what_compose_would_change_is_read_from_its_dry_run():
    assert facts.parse_dry_run(DRY_RUN, "cg") == {
        "network data": "recreate",
        "service postgres": "recreate",
        "service cache": "create",
        "service backend_green": "recreate",
    }
    assert facts.parse_dry_run(" DRY-RUN MODE -  Container cg-edge-1  Running\n", "cg") == {}


# `docker inspect` of the MLflow candidate killed for memory under its 1g limit: running,
# answering its health check between kills, brought back by `restart: unless-stopped`
OOM_LOOP = {
    "RestartCount": 2,
    "State": {
        "Status": "running",
        "OOMKilled": True,
        "ExitCode": 0,
        "StartedAt": "2026-12-03T11:00:00.482113651Z",
    },
}


def test_a_container_its_restart_policy_keeps_bringing_back_is_named_with_the_reason():
    started = 1796295600.482113  # 2026-12-03T11:00:00.482113Z
    assert facts.crash_loop(OOM_LOOP, started + 14) == (
        "restarted 2 times, the last 14s ago: out of memory (raise COLORGATE_MEMORY_LIMIT or mem_limit, or use less)"
    )
    exited = {"RestartCount": 1, "State": {**OOM_LOOP["State"], "OOMKilled": False}}
    assert facts.crash_loop(exited, started + 3) == "restarted 1 time, the last 3s ago: it exited"
    # restarts long ago (a color kept for rollback), none at all, or no start time: nothing to say
    assert facts.crash_loop(OOM_LOOP, started + facts.RECENT_RESTART_S + 1) == ""
    assert facts.crash_loop({**OOM_LOOP, "RestartCount": 0}, started + 14) == ""
    assert facts.crash_loop({"State": {"StartedAt": "0001-01-01T00:00:00Z"}}, started) == ""


def test_a_failed_command_shows_and_keeps_its_last_lines_for_a_person_to_act_on(capsys):
    from invoke import Exit

    from deploy.cli.common import operator_errors
    from deploy.edge import locking
    from deploy.release import history

    build = "\n".join(
        [f"#{n} step {n}" for n in range(1, 40)] + ["#40 ERROR: failed to solve: npm ci exited 1"]
    )
    exc = CommandError(["docker", "compose", "build"], 1, "", build, "docker compose build")
    assert (
        str(exc)
        == "docker compose build failed (exit 1): #40 ERROR: failed to solve: npm ci exited 1"
    )
    assert exc.tail() == [f"#{n} step {n}" for n in range(11, 40)] + [
        "#40 ERROR: failed to solve: npm ci exited 1"
    ]
    record = history.Record("deploy", "blue", "green", "v1", "v2")
    locking.settle(record, exc)
    assert (record.outcome, record.output) == ("failed", exc.tail())
    # the record's detail is one line, bounded, whatever the message was
    paged = history.Record("deploy", "blue", "green", "v1", "v2")
    locking.settle(paged, ColorgateError("the app's migration failed\n" + "x" * 5000))
    assert paged.detail == "the app's migration failed"
    locking.settle(paged, ColorgateError("y" * 5000))
    assert len(paged.detail) == 500 and paged.detail.endswith("…")
    shown = views.format_release(dataclasses.asdict(record))
    assert (
        "  its last lines:\n    | #11 step 11\n" in shown
        and "    | #40 ERROR: failed to solve: npm ci exited 1" in shown
    )

    @operator_errors
    def failing(c):
        raise exc

    with pytest.raises(Exit) as ended:
        failing(None)
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == "   | #11 step 11"
        and err[-1] == "   | #40 ERROR: failed to solve: npm ci exited 1"
        and len(err) == 30
    )
    assert (
        ended.value.message
        == "colorgate: docker compose build failed (exit 1): #40 ERROR: failed to solve: npm ci exited 1"
    )


def test_the_version_of_an_apps_code_is_its_commit_and_dirty_when_a_tracked_file_changed(tmp_path):
    assert images.source_version(tmp_path) == ("", "")  # no Git here: deploy counts (vN)
    git = ["git", "-C", str(tmp_path), "-c", "user.email=dev@example.org", "-c", "user.name=dev"]
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    for args in (
        ["init", "-q"],
        ["add", "compose.yaml"],
        ["commit", "-qm", "the shop, first release"],
    ):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert images.source_version(tmp_path) == (head, "the shop, first release") and len(head) == 12
    (tmp_path / "notes.txt").write_text("untracked: not a change of the code\n")
    assert images.source_version(tmp_path)[0] == head
    (tmp_path / "compose.yaml").write_text("services: {web: {}}\n")
    assert images.source_version(tmp_path)[0] == f"{head}-dirty"


@pytest.mark.parametrize("made", ["open to others", "someone else's", "a link"])
def test_the_rendered_compose_file_is_never_written_where_another_user_could_read_or_swap_it(
    settings, tmp_path, monkeypatch, made
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    planted = tmp_path / f"colorgate-compose-{os.getuid()}"
    if made == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        planted.symlink_to(tmp_path / "elsewhere")
    else:
        planted.mkdir(mode=0o700)
        os.chmod(planted, 0o777 if made == "open to others" else 0o700)
        if made == "someone else's":
            if os.getuid() != 0:
                pytest.skip("making a directory another user owns needs root")
            os.chown(planted, 65534, 65534)
    with pytest.raises(
        ColorgateError, match=r"belongs to someone else or is open to others: remove it"
    ):
        compose.compose_cmd(settings, "ps")
    assert not list(Path(planted).rglob("compose.yml"))
    os.rmdir(planted) if not planted.is_symlink() else planted.unlink()
    # made afresh, private
    assert compose.compose_cmd(settings, "ps") and oct(planted.stat().st_mode & 0o777) == "0o700"


def test_a_docker_command_that_is_ended_takes_what_it_started_with_it(tmp_path):
    """As `docker compose` runs its plugin as a child: a command ended (here by its
    timeout; a signal goes the same way) leaves no process of it running on its own."""
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {tmp_path}/child\nwait\n")
    docker.chmod(0o755)
    with pytest.raises(CommandError, match="timed out"):
        runner.run([str(docker), "compose", "run"], timeout=1)
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                break  # ended; only not yet reaped by init
            time.sleep(0.05)
        else:
            pytest.fail("the docker command's child outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)  # (this test's own, when it failed)
