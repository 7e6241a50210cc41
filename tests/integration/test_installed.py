"""Colorgate as a team adds it to its own repository: the wheel built from this tree,
installed in a fresh virtualenv, run in a directory outside the source tree that holds
only the app's compose file and its .env.development.local. `colorgate init` drafts the
contract and the gates' test module; a secret of the app's own, printed by a command,
reaches its container as a file and nowhere else; `colorgate up`, `colorgate deploy`,
`pytest features/` (the built-in gates and the app's own), `colorgate down --volumes`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.remote_and_idle import keygen, operator_home, ssh_host
from deploy import bases, config, edge, errors, profiles
from deploy.target import facts, runner

from . import workflow
from .conftest import REGISTRY_USER, isolated_env, remove_stack

ROOT = config.project_root()

# An app nobody wrote for Colorgate: one web service built from an inline Dockerfile,
# publishing its port and declaring a health check, as a compose file for `docker
# compose up` has it (the base image stands in for `python:3`: nothing can be pulled here).
COMPOSE = """\
name: shop
services:
  web:
    build:
      context: .
      args:
        BASE: ${COLORGATE_BASE_PYTHON:-colorgate-base/python:missing}
      dockerfile_inline: |
        ARG BASE
        FROM $${BASE}
        RUN mkdir -p /srv && echo "hello from the shop" > /srv/index.html && echo ok > /srv/health
        USER 65534
        CMD ["python3", "-m", "http.server", "8000", "--directory", "/srv"]
    ports:
      - "8000:8000"
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8000/health')"]
      interval: 10s
"""

OWN_FEATURE = """\
Feature: The shop
  @post
  Scenario: The shop's front page answers through the edge
    Given the public edge
    When I send GET "/"
    Then the status is 200
    And the body contains "hello from the shop"
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel of this tree installed (its dependencies from PyPI)."""
    where = tmp_path_factory.mktemp("installed")
    left = not (ROOT / "build").exists()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(where / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    if left:
        # setuptools' build directory, in the source tree
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True, timeout=120)
    wheel = next((where / "dist").glob("colorgate-*.whl"))
    subprocess.run(
        [str(where / "venv" / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return where / "venv" / "bin"


def run(bin_dir: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COLORGATE_", "POSTGRES_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_team_installs_colorgate_and_releases_its_app_from_its_own_directory(venv, tmp_path):
    app = tmp_path / "shop"
    app.mkdir()
    (app / "compose.yaml").write_text(COMPOSE)
    isolated = isolated_env("inst")
    local = {k: v for k, v in isolated.items() if k != "COLORGATE_PROFILE"}
    (app / ".env.development.local").write_text("".join(f"{k}={v}\n" for k, v in local.items()))
    assert sorted(p.name for p in app.iterdir()) == [".env.development.local", "compose.yaml"]
    # the installed package holds nothing of this tree's path
    where = run(
        venv,
        app,
        "python",
        "-c",
        "import deploy, colorgate_parts, colorgate_gates; print(deploy.__file__)",
    )
    assert (
        where.returncode == 0 and str(ROOT) not in where.stdout and "site-packages" in where.stdout
    ), where.stdout + where.stderr
    drafted = run(venv, app, "colorgate", "init")
    assert drafted.returncode == 0 and "the contract is valid" in drafted.stdout, (
        drafted.stdout + drafted.stderr
    )
    # the app's own secret, named in the contract, its value printed by a command (as a
    # secret manager's CLI would: here one reading a file outside the repository)
    token = secrets.token_hex(16)
    (tmp_path / "vault").write_text(token + "\n")
    contract_file = app / "compose.colorgate.yaml"
    contract_file.write_text(
        contract_file.read_text().replace(
            "x-colorgate:\n",
            "x-colorgate:\n  secrets:\n    shop_token: {services: [web], env: SHOP_TOKEN_FILE}\n",
            1,
        )
    )
    missing = run(venv, app, "colorgate", "secrets.check")
    assert missing.returncode == errors.BAD_INPUT and missing.stdout.startswith(
        "MISSING  shop_token: set COLORGATE_SECRET_SHOP_TOKEN"
    ), missing.stdout
    with (app / ".env.development.local").open("a") as f:
        f.write(f"COLORGATE_SECRET_SHOP_TOKEN_COMMAND=cat {tmp_path / 'vault'}\n")
    checked = run(venv, app, "colorgate", "secrets.check")
    assert checked.returncode == 0 and checked.stdout.startswith(
        "ok       shop_token: printed by COLORGATE_SECRET_SHOP_TOKEN_COMMAND in .env.development.local (32 characters)"
    ), checked.stdout
    # this test's own view, to clean up whatever happens
    settings = profiles.load("development", root=app, environ={})
    bases.build_bases(settings, bases.missing_bases(settings))
    try:
        assert "!! services.web.ports: left out: the edge routes to it" in drafted.stderr
        assert (app / "compose.colorgate.yaml").is_file() and (
            app / "features" / "test_colorgate.py"
        ).is_file()
        (app / "features" / "shop.feature").write_text(OWN_FEATURE)
        # the team's repository: its commit is the release's version
        (app / ".gitignore").write_text(".env.*.local\nreports/\n")
        git = ["git", "-C", str(app), "-c", "user.email=dev@example.org", "-c", "user.name=dev"]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the shop, first release"]):
            subprocess.run([*git, *args], check=True, capture_output=True)
        head = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        up = run(venv, app, "colorgate", "up")
        assert up.returncode == 0 and "web_blue" in up.stdout, up.stdout + up.stderr
        released = run(venv, app, "colorgate", "deploy")
        assert (
            released.returncode == 0
            and f"deploy: blue v1 -> green {head}: switched" in released.stdout
        ), released.stdout[-3000:] + released.stderr
        shown = run(venv, app, "colorgate", "history", "--show", "1")
        assert f"  commit: {head} the shop, first release" in shown.stdout, shown.stdout
        # the same commit is live: nothing released, and not a success
        again = run(venv, app, "colorgate", "deploy")
        assert again.returncode == errors.NOTHING_TO_DO and again.stderr.strip().endswith(
            f"{head} is already live on green: nothing to do (--force deploys it again)"
        )
        # its own gate, in the release
        assert "PASS  The shop: The shop's front page answers through the edge" in released.stderr
        assert (app / "reports").is_dir()  # the gates' reports are the app's
        # the secret is a file of the web copies only, its path in their environment, its value nowhere else
        live = facts.container(settings, "web_green")
        shown = runner.run(
            ["docker", "exec", live, "cat", "/run/app-secrets/shop_token"],
            env=settings.docker_env(),
        )
        assert shown.stdout.strip() == token
        inspected = json.dumps(facts.inspect(settings, live))
        assert "SHOP_TOKEN_FILE=/run/app-secrets/shop_token" in inspected and token not in inspected
        history = run(venv, app, "colorgate", "history", "--json")
        reports = "".join(p.read_text(errors="replace") for p in (app / "reports").glob("*.xml"))
        assert (
            token
            not in up.stdout
            + up.stderr
            + released.stdout
            + released.stderr
            + history.stdout
            + reports
            + checked.stdout
        )
        gates = run(venv, app, "pytest", "features/", "-p", "no:cacheprovider", "-q")
        assert gates.returncode == 0, gates.stdout[-3000:] + gates.stderr
        assert " passed" in gates.stdout and "failed" not in gates.stdout
        listed = run(
            venv, app, "pytest", "features/", "-p", "no:cacheprovider", "--collect-only", "-q"
        )
        names = listed.stdout
        assert (
            "the_shops_front_page_answers_through_the_edge" in names
            and "only_the_edge_publishes_host_ports" in names
        ), names
        down = run(venv, app, "colorgate", "down", "--volumes")
        assert down.returncode == 0, down.stderr
    finally:
        remove_stack(settings)


def test_the_reusable_release_workflow_runs_its_steps_against_an_ssh_host_and_a_registry(
    venv, registry, tmp_path
):
    """The job of .github/workflows/colorgate-release.yml, step by step as a runner runs
    it (tests/integration/workflow.py), from an app's repository holding its compose
    file, contract and gates: Colorgate installed by its own step (the wheel in place of
    PyPI's), the settings, key and host key written from secrets, the images pushed to a
    registry, the first release started and gated on a host reached over SSH, then a
    second commit deployed, the same commit again (nothing to do, exit 7, said in the
    summary), and a rollback by dispatch."""
    root = tmp_path / "runner"
    key = keygen(root / "key" / "id_ed25519")
    app = tmp_path / "repo"
    app.mkdir()
    (app / "compose.yaml").write_text(COMPOSE)
    drafted = run(venv, app, "colorgate", "init")
    assert drafted.returncode == 0, drafted.stdout + drafted.stderr
    (app / "features" / "shop.feature").write_text(OWN_FEATURE)
    (app / ".gitignore").write_text(".env.*.local\nreports/\n")
    git = ["git", "-C", str(app), "-c", "user.email=dev@example.org", "-c", "user.name=dev"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the shop, first release"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    address, password = registry
    isolated = isolated_env("wf")
    project = isolated["COLORGATE_PROJECT"]
    local = {k: v for k, v in isolated.items() if k != "COLORGATE_PROFILE"}
    local.update(
        COLORGATE_DOMAIN="shop.example.org",
        COLORGATE_BIND="127.0.0.1",
        COLORGATE_ANALYSIS_INTERVALS="0",
        POSTGRES_PASSWORD=secrets.token_urlsafe(18),
    )
    settings = profiles.load(
        "staging", root=app, environ={**local, "COLORGATE_REGISTRY": f"{address}/{project}"}
    )
    wheel = next((venv.parent.parent / "dist").glob("colorgate-*.whl"))
    with ssh_host(key) as host:
        # the job writes the key and known_hosts itself
        home = operator_home(root, host.port, known=False)
        plugins = home / ".docker" / "cli-plugins"  # a runner's image has the compose plugin
        plugins.mkdir(parents=True)
        # bootstrap's
        (plugins / "docker-compose").symlink_to(
            Path.home() / ".docker" / "cli-plugins" / "docker-compose"
        )
        known = subprocess.run(
            ["ssh-keyscan", "-p", str(host.port), "127.0.0.1"], capture_output=True, text=True
        ).stdout
        uploaded: list[str] = []

        def upload(given: dict) -> int:
            for pattern in given["path"].split():
                uploaded.extend(
                    str(p.relative_to(app)) for p in app.glob(pattern.removeprefix("./"))
                )
            return 0

        def job(action: str, scratch: str) -> tuple[list[workflow.Step], str]:
            return workflow.run_job(
                ROOT / ".github" / "workflows" / "colorgate-release.yml",
                "release",
                inputs={
                    "profile": "staging",
                    "environment": "staging",
                    "action": action,
                    "colorgate": str(wheel),
                    "registry": f"{address}/{project}",
                    "registry-user": REGISTRY_USER,
                    "bases": "mmdebstrap",
                },
                secrets={
                    "host": f"127.0.0.1:{host.port}",
                    "user": "deploy",
                    "ssh-key": (root / "key" / "id_ed25519").read_text(),
                    "known-hosts": known,
                    "settings": "".join(f"{k}={v}\n" for k, v in local.items()),
                    "registry-password": password,
                    "GITHUB_TOKEN": "unused-here",
                },
                github={"actor": "dev", "repository_owner": "Acme", "run_number": "1"},
                workspace=app,
                scratch=tmp_path / scratch,
                base_env={
                    **workflow.environment_without_colorgate(),
                    "HOME": str(home),
                    "PATH": f"{home}/bin{os.pathsep}{venv}{os.pathsep}{os.environ['PATH']}",
                },
                actions={
                    "actions/checkout": lambda given: (
                        0 if given["persist-credentials"] == "False" else 1
                    ),
                    "actions/setup-python": lambda given: 0,
                    "actions/upload-artifact": upload,
                },
            )

        def ran(steps: list[workflow.Step]) -> dict[str, int | None]:
            return {s.name: s.code for s in steps if s.ran}

        try:
            steps, summary = job("deploy", "first")
            outcome = ran(steps)
            assert all(code == 0 for code in outcome.values()), "\n".join(
                f"{s.name}: {s.code}\n{s.output[-3000:]}" for s in steps
            )
            # the first release: started, then gated
            assert "Deploy the inactive color, gate, switch" not in outcome
            head = subprocess.run(
                [*git, "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert (
                f"The first release: the stack was started at {head}, then gated." in summary
                and "Done." in summary
            ), summary
            assert (
                app / "reports" / "gates-first-release.xml"
            ).is_file() and "reports/gates-first-release.xml" in uploaded
            assert edge.read_active(settings).version == head
            assert (
                home / ".ssh" / "id_ed25519"
            ).stat().st_mode & 0o777 == 0o600  # written under umask 077
            assert password not in summary and password not in "".join(s.output for s in steps)

            (app / "features" / "shop.feature").write_text(
                OWN_FEATURE.replace("answers through the edge", "answers, again")
            )
            subprocess.run(
                [*git, "commit", "-qam", "the shop, second release"],
                check=True,
                capture_output=True,
            )
            second = subprocess.run(
                [*git, "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            steps, summary = job("deploy", "second")
            deployed = next(s for s in steps if s.name == "Deploy the inactive color, gate, switch")
            assert (
                deployed.code == 0
                and f"deploy: blue {head} -> green {second}: switched" in deployed.output
            ), deployed.output[-3000:]
            # the status and the release in the summary
            assert "Done." in summary and f"green {second}" in summary, summary
            # the release's picture
            assert any(p.startswith("reports/") and p.endswith(".png") for p in uploaded), uploaded

            # the same commit: nothing released, and said so
            steps, summary = job("deploy", "again")
            assert (
                next(s for s in steps if s.name == "Deploy the inactive color, gate, switch").code
                == errors.NOTHING_TO_DO
            )
            assert f"**Nothing to do** (exit {errors.NOTHING_TO_DO})" in summary, summary

            steps, summary = job("rollback", "rollback")
            outcome = ran(steps)
            assert (
                "Build and push the images" not in outcome
                and outcome["Roll back to the color that was live before"] == 0
            ), steps
            assert "Done." in summary and edge.read_active(settings).version == head
        finally:
            remove_stack(settings)
            refs = runner.run(
                ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
            ).stdout.split()
            mine = [r for r in refs if r.startswith(f"{address}/{project}/")]
            if mine:
                runner.run(["docker", "image", "rm", *mine], check=False)
