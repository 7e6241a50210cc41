"""Push to and pull from a real registry: Debian's docker-registry on loopback, with
htpasswd (bcrypt) authentication. The target pulls what it lacks instead of building."""

from __future__ import annotations

import dataclasses
import os
import re

import httpx
import pytest

from deploy import bases, edge, errors, images, profiles
from deploy import registry as registries
from deploy.errors import RegistryError
from deploy.target import facts, runner

from .conftest import REGISTRY_USER as USER
from .conftest import invoke, isolated_env, remove_stack


@pytest.fixture(scope="module")
def env(registry):
    address, password = registry
    env = isolated_env("reg")
    run_id = env["COLORGATE_PROJECT"]
    env.update(
        COLORGATE_REGISTRY=f"{address}/{run_id}",
        COLORGATE_REGISTRY_USER=USER,
        COLORGATE_REGISTRY_PASSWORD=password,
    )
    settings = profiles.load("development", environ={**os.environ, **env})
    try:
        yield env
    finally:
        remove_stack(settings)


def tags(registry, env, name: str) -> list[str]:
    address, password = registry
    r = httpx.get(
        f"http://{address}/v2/{env['COLORGATE_PROJECT']}/{name}/tags/list", auth=(USER, password)
    )
    return sorted(r.json().get("tags") or []) if r.status_code == 200 else []


def drop_local_tags(env) -> None:
    """The target lacks every image, so that it must pull them."""
    refs = runner.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
    ).stdout.split()
    mine = [r for r in refs if r.startswith(env["COLORGATE_REGISTRY"] + "/")]
    runner.run(["docker", "image", "rm", *mine])


def test_bad_registry_credentials_are_one_line_before_anything(registry, env):
    proc = invoke(
        "images.push",
        "--version",
        "v7",
        env={**env, "COLORGATE_REGISTRY_PASSWORD": "wrong-password-123"},
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == errors.FAILED and lines[-1] == (
        f"colorgate: the registry {registry[0]} refused the credentials: check COLORGATE_REGISTRY_USER and COLORGATE_REGISTRY_PASSWORD"
    )
    assert "wrong-password-123" not in proc.stderr and tags(registry, env, "backend") == []


def test_push_then_the_target_pulls_what_it_lacks(registry, env):
    pushed = invoke("images.push", "--version", "v7", env=env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    settings = profiles.load("development", environ={**os.environ, **env})
    for name in images.pushed_images(settings.app):
        assert tags(registry, env, name) == ["latest", "v7"], name
    assert registry[1] not in pushed.stdout + pushed.stderr
    assert not (
        os.path.exists(os.path.expanduser("~/.docker/config.json"))
        and env["COLORGATE_REGISTRY"].split("/")[0]
        in open(os.path.expanduser("~/.docker/config.json")).read()
    )

    drop_local_tags(env)
    up = invoke("up", "--version", "v7", env=env)
    assert up.returncode == 0, up.stderr[-2000:]
    assert (
        "pulling the images of postgres, edge" in up.stderr
        and "active color: blue (v7)" in up.stdout
    )

    assert invoke("images.push", "--version", "v8", env=env).returncode == 0
    settings = profiles.load("development", environ={**os.environ, **env})
    # the target lacks one image and holds the other's tag from another build: the registry's are what runs
    runner.run(["docker", "image", "rm", images.app_tag(settings, "frontend", "v8")])
    runner.run(
        images.tag_cmd(
            images.app_tag(settings, "frontend", "latest"),
            images.app_tag(settings, "backend", "v8"),
        )
    )
    deployed = invoke("deploy", "--version", "v8", env=env)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    assert (
        "pulling green images (v8)" in deployed.stderr
        and "deploy: blue v7 -> green v8: switched" in deployed.stdout
    )
    assert facts.service_states(settings)["backend_green"].image == images.app_tag(
        settings, "backend", "v8"
    )
    assert facts.inspect(settings, facts.container(settings, "backend_green"))[
        "Image"
    ] == registries.registry_image(settings, "backend", "v8")

    # a version the registry holds from another build is refused before anything is pushed
    runner.run(
        images.tag_cmd(
            images.app_tag(settings, "frontend", "latest"),
            images.app_tag(settings, "backend", "v8"),
        )
    )
    with (
        registries.registry_session(settings) as session,
        pytest.raises(
            RegistryError,
            match=(
                rf"^the registry holds {re.escape(images.app_tag(settings, 'backend', 'v8'))} from another build \(sha256:"
            ),
        ),
    ):
        registries.push(settings, "v8", session)
    assert (
        registries.registry_image(settings, "backend", "v8")
        == facts.inspect(settings, facts.container(settings, "backend_green"))["Image"]
    )

    missing = invoke("deploy", "--version", "v99", env=env)
    assert (
        missing.returncode == errors.FAILED
        and "is not in the registry" in missing.stderr.strip().splitlines()[-1]
    )
    assert edge.read_active(settings).version == "v8"


def test_base_images_build_from_debians_image_in_a_registry_with_debians_packages(registry, env):
    """COLORGATE_BASES=image, for a machine without mmdebstrap: the engine builds a base
    FROM `<image>:bookworm-slim` (here a minimal Debian made by mmdebstrap, pushed to the
    test registry in place of Docker Hub's) with the packages from Debian's mirror."""
    settings = profiles.load("development", environ={**os.environ, **env})
    slim = bases.BaseImage("slim", ("ca-certificates",))
    bases.build_bases(settings, [slim])
    debian = f"{settings.image_prefix}debian"
    runner.run(images.tag_cmd(slim.tag(settings.base_source), f"{debian}:bookworm-slim"))
    with registries.registry_session(settings) as session:
        runner.run(["docker", "push", "--quiet", f"{debian}:bookworm-slim"], env=session)
        runner.run(["docker", "image", "rm", f"{debian}:bookworm-slim"])
        # as `docker login` would let it
        runner.run(["docker", "pull", "--quiet", f"{debian}:bookworm-slim"], env=session)
    made = dataclasses.replace(settings, bases="image", debian_image=debian)
    base = bases.BASES["redis"]
    tag = base.tag(made.base_source)
    try:
        bases.build_bases(made, [base])
        assert bases.image_exists(made, tag) and tag != base.tag(settings.base_source)
        ran = runner.run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                tag,
                "-c",
                "redis-server --version; ls /usr/share/doc/redis-server",
            ]
        )
        # documentation left out
        assert (
            ran.stdout.startswith("Redis server v=") and ran.stdout.splitlines()[-1] == "copyright"
        )
    finally:
        runner.run(["docker", "image", "rm", "--force", tag], check=False)
