"""Images: Debian base images made without a registry, and the stack's app images.

Base images come from Debian's own mirror (mmdebstrap, then `docker import`), with
every package the image needs included at build time, so nothing in a Dockerfile
needs network access. Their tag carries a hash of what went in, so a changed package
list makes a new base image and an unchanged one is never rebuilt.

App images are built by `docker compose build` (BuildKit in the engine; no buildx
plugin needed) and tagged `<prefix><name>:<version>` plus `latest`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from deploy import runner
from deploy.config import Settings

SUITE = "bookworm"
BASE_REPO = "colorgate-base"


@dataclass(frozen=True)
class BaseImage:
    name: str
    packages: tuple[str, ...]
    suite: str = SUITE

    def tag(self, mirror: str) -> str:
        digest = hashlib.sha256(" ".join((self.suite, mirror, *self.packages)).encode()).hexdigest()[:10]
        return f"{BASE_REPO}/{self.name}:{self.suite}-{digest}"


BASES = {
    "nginx": BaseImage("nginx", ("nginx-light", "openssl", "ca-certificates", "curl")),
    "python": BaseImage("python", ("python3", "python3-psycopg2", "ca-certificates")),
    "postgres": BaseImage("postgres", ("postgresql-15", "openssl", "socat")),
    "certbot": BaseImage("certbot", ("certbot", "ca-certificates")),
}

RELEASE_IMAGES = ("frontend", "backend")  # versioned per color; edge and postgres are shared

# Documentation, manuals and translations are left out of base images.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


def sources(mirror: str, suite: str = SUITE) -> list[str]:
    """APT source lines for the suite, its updates and its security updates."""
    mirror = mirror.rstrip("/")
    security = mirror + "-security" if mirror.endswith("/debian") else mirror
    return [
        f"deb {mirror} {suite} main",
        f"deb {mirror} {suite}-updates main",
        f"deb {security} {suite}-security main",
    ]


def mmdebstrap_cmd(base: BaseImage, out: Path, mirror: str) -> list[str]:
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(base.packages)}"]
    cmd += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright", base.suite, str(out), *sources(mirror, base.suite)]
    return cmd


def import_cmd(tar: Path, tag: str) -> list[str]:
    return ["docker", "image", "import", "--change", 'CMD ["bash"]', "--message", "colorgate base (mmdebstrap)", str(tar), tag]


def image_exists_cmd(tag: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", tag]


def image_id(settings: Settings, tag: str) -> str | None:
    proc = runner.run(image_exists_cmd(tag), env=settings.docker_env(), check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_exists(settings: Settings, tag: str) -> bool:
    return image_id(settings, tag) is not None


def missing_bases(settings: Settings) -> list[BaseImage]:
    return [base for base in BASES.values() if not image_exists(settings, base.tag(settings.debian_mirror))]


def build_bases(settings: Settings, bases: list[BaseImage]) -> None:
    """mmdebstrap the missing base images in parallel, then import them."""
    if not bases:
        return
    with tempfile.TemporaryDirectory(prefix="colorgate-base-") as tmp:

        def make(base: BaseImage) -> None:
            tar = Path(tmp) / f"{base.name}.tar"
            runner.run(mmdebstrap_cmd(base, tar, settings.debian_mirror), what=f"mmdebstrap {base.name}", timeout=1200)
            runner.run(import_cmd(tar, base.tag(settings.debian_mirror)), env=settings.docker_env(), what=f"docker import {base.name}")

        with ThreadPoolExecutor(max_workers=len(bases)) as pool:
            for future in [pool.submit(make, base) for base in bases]:
                future.result()


def next_version(tags: list[str]) -> str:
    """The next sortable release tag: v1, v2, ... after the highest existing vN."""
    numbers = [int(m[1]) for tag in tags if (m := re.fullmatch(r"v(\d+)", tag))]
    return f"v{max(numbers, default=0) + 1}"


def app_tag(settings: Settings, name: str, version: str) -> str:
    return f"{settings.image_prefix}{name}:{version}"


def base_build_args(settings: Settings) -> dict[str, str]:
    """Compose variables naming the base image each Dockerfile starts FROM."""
    return {f"COLORGATE_BASE_{name.upper()}": base.tag(settings.debian_mirror) for name, base in BASES.items()}


def tag_cmd(source: str, target: str) -> list[str]:
    return ["docker", "image", "tag", source, target]


def release_tags(settings: Settings) -> list[str]:
    """Version tags that exist for every release image (frontend and backend)."""
    per_image = []
    for name in RELEASE_IMAGES:
        out = runner.run(
            ["docker", "image", "ls", "--format", "{{.Tag}}", f"{settings.image_prefix}{name}"],
            env=settings.docker_env(),
        ).stdout
        per_image.append({tag for tag in out.split() if tag != "latest"})
    return sorted(set.intersection(*per_image), key=lambda t: (len(t), t))
