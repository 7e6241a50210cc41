"""Without a registry: images made on this machine are streamed over SSH to a host
with an engine of its own (a second, real dockerd started for this test), and only
the images that host lacks are sent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from deploy import bases, profiles
from deploy.target import runner

from .conftest import invoke, isolated_env, remove_stack
from .test_ssh import keygen, operator_env, operator_home, ssh_host


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A second Docker engine (its own data, socket and containerd namespace; vfs storage)
    in a network namespace of its own: it only stores images here, and with no bridge of
    its own dockerd would delete the host's docker0 (`--bridge=none` does that)."""
    root = tmp_path_factory.mktemp("engine")
    (root / "daemon.json").write_text("{}")
    name = f"cgtest{os.getpid()}"
    log = open(root / "dockerd.log", "w")
    proc = subprocess.Popen(
        [
            "unshare",
            "--net",
            "dockerd",
            "--config-file",
            str(root / "daemon.json"),
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "--host",
            f"unix://{root}/docker.sock",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--storage-driver=vfs",
            "--containerd-namespace",
            name,
            "--containerd-plugins-namespace",
            f"{name}p",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    socket = f"{root}/docker.sock"
    try:
        for _ in range(100):
            if (
                runner.run(
                    ["docker", "version"], env={"DOCKER_HOST": f"unix://{socket}"}, check=False
                ).returncode
                == 0
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail(
                f"the second dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}"
            )
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def remote(engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    key = keygen(root / "home" / ".ssh" / "id_ed25519")
    with ssh_host(key, socket=engine) as host:
        env = operator_env(isolated_env("st"), operator_home(root, host.port))
        try:
            yield host, env
        finally:
            # this machine's image tags
            remove_stack(profiles.load("development", environ={**os.environ, **env}))


def remote_ids(engine: str, prefix: str) -> dict[str, str]:
    out = runner.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
        env={"DOCKER_HOST": f"unix://{engine}"},
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.startswith(prefix))


def test_only_what_the_host_lacks_is_sent(engine, remote, tmp_path):
    host, env = remote
    prefix = env["COLORGATE_IMAGE_PREFIX"]
    first = invoke("images.send", "--host", host.url, "--version", "v1", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    # frontend and backend are sent once and tagged twice (v1, latest); edge, postgres, certbot once
    assert first.stdout.startswith("sent 6 image(s), 2 already there"), first.stdout
    settings = profiles.load("development", environ={**os.environ, **env})
    local = {ref: bases.image_id(settings, ref) for ref in remote_ids(engine, prefix)}
    assert remote_ids(engine, prefix) == {ref: image_id[7:19] for ref, image_id in local.items()}
    assert len(local) == 8

    again = invoke("images.send", "--host", host.url, "--version", "v1", env=env)
    assert again.returncode == 0 and again.stdout.strip() == "sent 0 image(s), 8 already there", (
        again.stdout
    )

    # v2 with a changed backend: only the backend is new; the unchanged frontend is only tagged
    # the app and the PostgreSQL it builds from ../
    shutil.copytree(settings.app_dir.parent, tmp_path / "examples")
    app = tmp_path / "examples" / settings.app_dir.name
    with open(app / "backend" / "app.py", "a") as f:
        f.write("\n# v2\n")
    v2 = invoke(
        "images.send",
        "--host",
        host.url,
        "--version",
        "v2",
        env={**env, "COLORGATE_APP": str(app)},
    )
    assert v2.returncode == 0, v2.stderr[-2000:]
    assert v2.stdout.strip() == f"sent 1 image(s), 7 already there: {prefix}backend:v2", v2.stdout
    assert f"{prefix}backend:v2" in remote_ids(
        engine, prefix
    ) and f"{prefix}frontend:v2" in remote_ids(engine, prefix)
