"""The stack's images: which of them a release ships, their versions and tags (the base
images they are built on: bases.py; a registry: registry.py).

App images are built by `docker compose build` (BuildKit in the engine; no buildx
plugin needed) and tagged `<prefix><name>:<version>` plus `latest`.
"""

from __future__ import annotations

import re
from pathlib import Path

from deploy.config import Settings
from deploy.target import runner

OWN_IMAGES = ("edge", "dbtools", "certbot")  # Colorgate's own parts; compose runs them as :latest


def release_images(app) -> tuple[str, ...]:
    """The app's images that carry a release version: its colored services it builds."""
    return tuple(name for name in app.colored if app.buildable(name))


def infra_images(app) -> tuple[str, ...]:
    """Images shared by both colors, run as :latest: Colorgate's own and the app's
    shared services it builds (a shared service with only `image:` is used as is)."""
    return (*OWN_IMAGES, *(name for name in app.shared if app.buildable(name)))


def pushed_images(app) -> tuple[str, ...]:
    return (*release_images(app), *infra_images(app))


def next_version(tags: list[str]) -> str:
    """The next sortable release tag: v1, v2, ... after the highest existing vN."""
    numbers = [int(m[1]) for tag in tags if (m := re.fullmatch(r"v(\d+)", tag))]
    return f"v{max(numbers, default=0) + 1}"


def next_release(tags: list[str], history: list[dict], live: set[str]) -> tuple[str, bool]:
    """The next vN, and whether its images are to be made again: a deploy refused or
    failed before it went live (never `live` now, never switched to in the `history`)
    uses up no number: the next deploy builds that version anew."""
    live = (
        live
        | {r.get("live_version") for r in history}
        | {r.get("to_version") for r in history if r.get("outcome") in ("switched", "rolled back")}
    )
    never = {
        r.get("to_version")
        for r in history
        if r.get("action") == "deploy" and r.get("outcome") in ("refused", "failed", "interrupted")
    } - live
    version = next_version([tag for tag in tags if tag not in never])
    return version, version in tags


def source_version(directory: Path) -> tuple[str, str]:
    """The version of the code in `directory` by Git (its commit, 12 hex digits, and
    `-dirty` when a tracked file changed since) and that commit's subject; ("", "")
    outside a Git work tree."""

    def git(*args: str) -> str:
        proc = runner.run(["git", "-C", str(directory), *args], check=False, what="git")
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return "", ""
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return commit + "-dirty" * dirty, git("log", "-1", "--format=%s")


def default_version(settings: Settings) -> str:
    """A release's version when none is given: the app's commit (COLORGATE_VERSIONS=commit,
    its code in Git), else the next vN."""
    commit = source_version(settings.app.directory)[0] if settings.versions == "commit" else ""
    return commit or next_version(release_tags(settings))


def app_tag(settings: Settings, name: str, version: str) -> str:
    return f"{settings.image_prefix}{name}:{version}"


def tag_cmd(source: str, target: str) -> list[str]:
    return ["docker", "image", "tag", source, target]


def release_tags(settings: Settings) -> list[str]:
    """Version tags that exist for every release image of the app."""
    per_image = []
    for name in release_images(settings.app):
        out = runner.run(
            ["docker", "image", "ls", "--format", "{{.Tag}}", f"{settings.image_prefix}{name}"],
            env=settings.docker_env(),
        ).stdout
        per_image.append({tag for tag in out.split() if tag != "latest"})
    return sorted(set.intersection(*per_image), key=lambda t: (len(t), t)) if per_image else []
