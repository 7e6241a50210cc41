"""Registries: an app's images pushed to and pulled from a registry (a Swarm's nodes pull
them), with the login a registry asks for, and its errors explained in one line."""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator

import httpx

from deploy.bases import image_id
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, RegistryError
from deploy.images import app_tag, infra_images, pushed_images, tag_cmd
from deploy.target import runner


def registry_server(settings: Settings) -> str:
    return settings.registry.split("/", 1)[0]


def explain_registry_error(server: str, text: str) -> str:
    """docker login/push/pull's complaint -> one line with the cause and the fix."""
    lower = text.lower()
    last = (text.strip().splitlines() or ["no output"])[-1].strip()
    # (a bare "401" would match inside a project name or digest: cgtestreg2401... was read as a refusal)
    if (
        "unauthorized" in lower
        or re.search(r"\b401\b", lower)
        or "incorrect username or password" in lower
        or "authentication required" in lower
    ):
        return f"the registry {server} refused the credentials: check COLORGATE_REGISTRY_USER and COLORGATE_REGISTRY_PASSWORD"
    if "denied" in lower:
        return f"the registry {server} denied access ({last}): the user needs push/pull rights on the repository"
    if "manifest unknown" in lower or "not found" in lower:
        return f"an image is not in the registry {server} ({last}): push it first with `invoke images.push --version ...`"
    if any(
        s in lower
        for s in (
            "connection refused",
            "no such host",
            "i/o timeout",
            "dial tcp",
            "server gave http response",
        )
    ):
        return f"cannot reach the registry {server} ({last}): check COLORGATE_REGISTRY and that the host can reach it"
    return f"the registry {server} failed: {last}"


@contextlib.contextmanager
def registry_session(settings: Settings) -> Iterator[dict[str, str]]:
    """Environment for docker push/pull against the registry: the target engine and,
    when credentials are set, a throwaway client config logged in with them (nothing
    is left in ~/.docker). Refuses at once when the registry rejects them."""
    env = settings.docker_env()
    if not settings.registry_user:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="colorgate-docker-config-") as config_dir:
        env = {**env, "DOCKER_CONFIG": config_dir}
        try:
            runner.run(
                [
                    "docker",
                    "login",
                    "--username",
                    settings.registry_user,
                    "--password-stdin",
                    registry_server(settings),
                ],
                input=settings.registry_password,
                env=env,
                what="docker login",
                timeout=120,
            )
        except CommandError as exc:
            raise RegistryError(
                explain_registry_error(registry_server(settings), exc.stderr + exc.stdout)
            ) from None
        yield env


MANIFESTS = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def registry_image(settings: Settings, name: str, tag: str) -> str | None:
    """The image (its config's digest, what the engine calls its id) the registry holds
    as `name:tag`, or None when it holds none: the registry's HTTP API, with basic auth
    or the token a Bearer challenge asks for (GHCR, Docker Hub)."""
    server = registry_server(settings)
    repository = app_tag(settings, name, tag).removeprefix(f"{server}/").rsplit(":", 1)[0]
    # as the engine trusts loopback
    scheme = "http" if server.split(":")[0] in ("127.0.0.1", "localhost") else "https"
    url, accept = f"{scheme}://{server}/v2/{repository}/manifests/{tag}", {"Accept": MANIFESTS}
    auth = (settings.registry_user, settings.registry_password) if settings.registry_user else None
    try:
        with httpx.Client(timeout=30) as client:
            answer = client.get(url, headers=accept)
            challenge = answer.headers.get("www-authenticate", "")
            if answer.status_code == 401 and challenge.lower().startswith("bearer"):
                asked = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
                granted = client.get(
                    asked.get("realm", ""),
                    params={k: v for k, v in asked.items() if k in ("service", "scope")},
                    auth=auth,
                )
                token = (
                    granted.json().get("token") or granted.json().get("access_token")
                    if granted.status_code == 200
                    else ""
                )
                answer = client.get(url, headers={**accept, "Authorization": f"Bearer {token}"})
            elif answer.status_code == 401 and auth:
                answer = client.get(url, headers=accept, auth=auth)
    except (httpx.HTTPError, ValueError) as exc:
        raise RegistryError(explain_registry_error(server, f"dial tcp: {exc}")) from None
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        raise RegistryError(
            explain_registry_error(server, f"{answer.status_code} {answer.reason_phrase}")
        )
    return (answer.json().get("config") or {}).get("digest")


def push(settings: Settings, version: str, env: dict[str, str]) -> list[str]:
    """Push every image at `version` and `latest` (the infra images were built as latest),
    refusing first, before any is pushed, a `version` the registry holds from another
    build: a version names one build (a laptop's v7 and CI's v7 are not the same code)."""
    pushed = []
    shared = infra_images(settings.app)
    for name in pushed_images(settings.app):
        if name in shared:
            runner.run(
                tag_cmd(app_tag(settings, name, "latest"), app_tag(settings, name, version)),
                env=settings.docker_env(),
            )
    for name in pushed_images(settings.app):
        held, built = (
            registry_image(settings, name, version),
            image_id(settings, app_tag(settings, name, version)),
        )
        if held and held != built:
            raise RegistryError(
                f"the registry holds {app_tag(settings, name, version)} from another build ({held[:19]}, this one "
                f"{(built or '?')[:19]}): give this build a version of its own (--version), a version names one build"
            )
    for name in pushed_images(settings.app):
        for tag in (version, "latest"):
            ref = app_tag(settings, name, tag)
            try:
                runner.run(
                    ["docker", "push", "--quiet", ref],
                    env=env,
                    what=f"docker push {ref}",
                    timeout=3600,
                )
            except CommandError as exc:
                raise RegistryError(
                    explain_registry_error(registry_server(settings), exc.stderr + exc.stdout)
                ) from None
            pushed.append(ref)
    return pushed


def pull(
    settings: Settings,
    names: tuple[str, ...],
    version: str,
    env: dict[str, str],
    as_latest: bool = False,
) -> None:
    """Pull `names` at `version` onto the target (and tag them latest there, for the
    shared images compose runs as latest)."""
    for name in names:
        ref = app_tag(settings, name, version)
        try:
            runner.run(
                ["docker", "pull", "--quiet", ref], env=env, what=f"docker pull {ref}", timeout=3600
            )
        except CommandError as exc:
            raise RegistryError(
                explain_registry_error(registry_server(settings), exc.stderr + exc.stdout)
            ) from None
        if as_latest and version != "latest":
            runner.run(tag_cmd(ref, app_tag(settings, name, "latest")), env=settings.docker_env())


def send(settings: Settings, refs: list[str]) -> tuple[list[str], list[str]]:
    """Make the target have `refs` as this machine's engine has them, sending only the
    images it lacks (docker save | docker load over SSH); an image it has under another
    name is only tagged there. Returns (sent, already there)."""
    local = settings.builder
    sent, present = [], []
    for ref in refs:
        wanted = image_id(local, ref)
        if wanted is None:
            raise ColorgateError(f"{ref} is not on this machine to send: build it first")
        if image_id(settings, ref) == wanted:
            present.append(ref)
            continue
        if image_id(settings, wanted) is not None:
            runner.run(
                tag_cmd(wanted, ref), env=settings.docker_env(), what=f"tagging {ref} on the target"
            )
            present.append(ref)
            continue
        with runner.step(f"sending {ref} to {settings.docker_host or 'the local engine'}"):
            runner.pipe(
                ["docker", "save", ref],
                ["docker", "load", "--quiet"],
                first_env=local.docker_env(),
                second_env=settings.docker_env(),
                what=f"docker save {ref} | docker load",
                timeout=3600,
            )
        sent.append(ref)
    return sent, present
