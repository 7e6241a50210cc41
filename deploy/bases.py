"""Debian base images made without a registry (nginx, postgres, certbot, python, and the
examples' own), the PostgreSQL majors the database tools cover, the images' ages.

Base images come from Debian's own mirror (mmdebstrap, then `docker import`), with
every package the image needs included at build time, so nothing in a Dockerfile
needs network access. Their tag carries a hash of what went in, so a changed package
list makes a new base image; an unchanged one is made again once older than
COLORGATE_BASE_MAX_AGE (refresh_bases), so Debian's security updates reach it."""

from __future__ import annotations

import hashlib
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deploy.config import Settings
from deploy.errors import ConfigError
from deploy.target import runner

SUITE = "bookworm"


BASE_REPO = "colorgate-base"


@dataclass(frozen=True)
class BaseImage:
    name: str
    packages: tuple[str, ...]
    suite: str = SUITE

    def tag(self, mirror: str) -> str:
        digest = hashlib.sha256(
            " ".join((self.suite, mirror, *self.packages)).encode()
        ).hexdigest()[:10]
        return f"{BASE_REPO}/{self.name}:{self.suite}-{digest}"


BASES = {
    # Colorgate's own parts: the edge, dbtools (and the examples' PostgreSQL), certbot
    "nginx": BaseImage(
        "nginx", ("nginx-light", "libnginx-mod-http-lua", "openssl", "ca-certificates", "curl")
    ),
    "postgres": BaseImage(
        "postgres", ("postgresql-15", "openssl", "socat", "nftables", "ca-certificates")
    ),
    "certbot": BaseImage("certbot", ("certbot", "ca-certificates")),
    # off-host backup copies (made on first use)
    "rclone": BaseImage("rclone", ("rclone", "ca-certificates")),
    # for the examples (an app names one with COLORGATE_BASE_<NAME> in its compose file)
    "python": BaseImage("python", ("python3", "python3-psycopg2", "ca-certificates")),
    "pyweb": BaseImage(
        "pyweb",
        ("python3", "python3-psycopg2", "python3-redis", "python3-alembic", "ca-certificates"),
    ),
    "redis": BaseImage("redis", ("redis-server", "ca-certificates")),
    # apps nobody here wrote, as Debian packages them
    "miniflux": BaseImage("miniflux", ("miniflux", "ca-certificates"), suite="trixie"),
    # ... and where it is an app from PyPI, the Python it is installed with
    "mlflow": BaseImage("mlflow", ("python3", "python3-venv", "ca-certificates")),
}


OWN_BASES = ("nginx", "postgres", "certbot")


# The PostgreSQL majors Debian packages, each in its suite. The database tools (pg_dump,
# pg_restore, psql, and verify's throwaway server) are those of the oldest of them that is
# at least as new as the server: pg_dump reads servers of its own major or older, never a
# newer one, and a restore is checked in the server's own major where Debian has it.
POSTGRES_SUITES = {13: "bullseye", 15: SUITE, 17: "trixie"}


TOOLS_MAJOR = 15  # dbtools:latest, made by `up` (BASES["postgres"])


def tools_major(server: int) -> int:
    """The PostgreSQL major of the tools for a server of major `server`."""
    fits = [major for major in sorted(POSTGRES_SUITES) if major >= server]
    if not fits:
        raise ConfigError(
            f"the database runs PostgreSQL {server}, newer than the newest tools Debian packages "
            f"({max(POSTGRES_SUITES)}): run PostgreSQL {max(POSTGRES_SUITES)} or older"
        )
    return fits[0]


def postgres_base(major: int) -> BaseImage:
    """The base image holding Debian's PostgreSQL `major` (the dbtools image's base)."""
    if major == TOOLS_MAJOR:
        return BASES["postgres"]
    return BaseImage(
        f"postgres{major}",
        (f"postgresql-{major}", *BASES["postgres"].packages[1:]),
        suite=POSTGRES_SUITES[major],
    )


def tools_tag(major: int) -> str:
    """The dbtools image's tag for the tools of `major`."""
    return "latest" if major == TOOLS_MAJOR else f"pg{major}"


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
    cmd += [
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        base.suite,
        str(out),
        *sources(mirror, base.suite),
    ]
    return cmd


def base_dockerfile(base: BaseImage, image: str, mirror: str) -> str:
    """A base made FROM Debian's official image of its suite, with the same packages
    from the same mirror as mmdebstrap's, documentation left out alike."""
    dpkg = (
        "".join(f"path-exclude={pattern}\\n" for pattern in DPKG_EXCLUDES)
        + "path-include=/usr/share/doc/*/copyright\\n"
    )
    apt = "".join(f"{line}\\n" for line in sources(mirror, base.suite))
    return (
        f"FROM {image}:{base.suite}-slim\n"
        f"RUN printf '{dpkg}' > /etc/dpkg/dpkg.cfg.d/colorgate-excludes \\\n"
        f" && rm -f /etc/apt/sources.list.d/* && printf '{apt}' > /etc/apt/sources.list \\\n"
        " && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        f"{' '.join(base.packages)} > /dev/null \\\n"
        " && rm -rf /var/lib/apt/lists/*\n"
        'CMD ["bash"]\n'
    )


def import_cmd(tar: Path, tag: str) -> list[str]:
    return [
        "docker",
        "image",
        "import",
        "--change",
        'CMD ["bash"]',
        "--message",
        "colorgate base (mmdebstrap)",
        str(tar),
        tag,
    ]


def image_exists_cmd(tag: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", tag]


def image_id(settings: Settings, tag: str) -> str | None:
    proc = runner.run(image_exists_cmd(tag), env=settings.docker_env(), check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_exists(settings: Settings, tag: str) -> bool:
    return image_id(settings, tag) is not None


def needed_bases(settings: Settings) -> list[BaseImage]:
    """Colorgate's own bases and those the app's compose file names (COLORGATE_BASE_<NAME>)."""
    named = {
        m.lower() for m in re.findall(r"COLORGATE_BASE_([A-Z0-9]+)", settings.app.file.read_text())
    }
    return [base for name, base in BASES.items() if name in OWN_BASES or name in named]


def missing_bases(settings: Settings) -> list[BaseImage]:
    return [
        base
        for base in needed_bases(settings)
        if not image_exists(settings, base.tag(settings.base_source))
    ]


def build_bases(settings: Settings, bases: list[BaseImage], force: bool = False) -> None:
    """Make those of `bases` that are missing (all of them with `force`), in parallel:
    mmdebstrap them here and import them, or (COLORGATE_BASES=image) build them FROM
    Debian's image."""
    bases = [
        base
        for base in bases
        if force or not image_exists(settings, base.tag(settings.base_source))
    ]
    if not bases:
        return
    with tempfile.TemporaryDirectory(prefix="colorgate-base-") as tmp:

        def make(base: BaseImage) -> None:
            # the legacy builder: it uses a FROM image the engine has, and pulls one it lacks
            if settings.bases == "image":
                runner.run(
                    ["docker", "build", "--quiet", "--tag", base.tag(settings.base_source), "-"],
                    input=base_dockerfile(base, settings.debian_image, settings.debian_mirror),
                    env={**settings.docker_env(), "DOCKER_BUILDKIT": "0"},
                    what=f"building the {base.name} base",
                    timeout=1200,
                )
                return
            tar = Path(tmp) / f"{base.name}.tar"
            runner.run(
                mmdebstrap_cmd(base, tar, settings.debian_mirror),
                what=f"mmdebstrap {base.name}",
                timeout=1200,
            )
            runner.run(
                import_cmd(tar, base.tag(settings.base_source)),
                env=settings.docker_env(),
                what=f"docker import {base.name}",
            )

        with ThreadPoolExecutor(max_workers=len(bases)) as pool:
            for future in [pool.submit(make, base) for base in bases]:
                future.result()


def base_ages(settings: Settings, bases: list[BaseImage]) -> dict[str, float | None]:
    """How old each base image is, in seconds, by the engine's record of when it was made
    (RFC 3339 with nanoseconds; None: missing)."""
    ages: dict[str, float | None] = {}
    for base in bases:
        proc = runner.run(
            [
                "docker",
                "image",
                "inspect",
                "--format",
                "{{.Created}}",
                base.tag(settings.base_source),
            ],
            env=settings.docker_env(),
            check=False,
        )
        m = re.fullmatch(
            r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", proc.stdout.strip()
        )
        made = (
            datetime.fromisoformat(m[1] + (m[2] or "")[:7] + ("+00:00" if m[3] == "Z" else m[3]))
            if m
            else None
        )
        ages[base.name] = (datetime.now(UTC) - made).total_seconds() if made else None
    return ages


def stale(ages: dict[str, float | None], max_age: int) -> list[str]:
    """The bases to make (again): missing ones, and, unless `max_age` is 0, those older."""
    return [name for name, age in ages.items() if age is None or (max_age and age > max_age)]


def format_age(seconds: float | None) -> str:
    n, unit = (
        (None, "")
        if seconds is None
        else (round(seconds / 86400), "day")
        if seconds >= 172800
        else (round(seconds / 3600), "hour")
    )
    return "missing" if n is None else f"{n} {unit}{'' if n == 1 else 's'}"


def refresh_bases(
    settings: Settings, bases: list[BaseImage], force: bool = False, ages: dict | None = None
) -> list[str]:
    """Make again those of `bases` that are missing or older than COLORGATE_BASE_MAX_AGE (all
    with `force`; `ages`: their base_ages, when read), saying why; returns their names. Images
    built FROM them then get Debian's updates; an old image is removed where nothing uses it."""
    ages = base_ages(settings, bases) if ages is None else ages
    names = [base.name for base in bases] if force else stale(ages, settings.base_max_age)
    if names:
        made = (
            "from Debian's mirror"
            if settings.bases == "mmdebstrap"
            else f"FROM {settings.debian_image} with Debian's packages"
        )
        with runner.step(
            f"making base images {made}: {', '.join(f'{n} ({format_age(ages[n])})' for n in names)} (about a minute)"
        ):
            chosen = [base for base in bases if base.name in names]
            replaced = [image_id(settings, base.tag(settings.base_source)) for base in chosen]
            build_bases(settings, chosen, force=True)
            # only once untagged (another name may still hold it), and unused
            for image in filter(None, replaced):
                tags = runner.run(
                    ["docker", "image", "inspect", "--format", "{{len .RepoTags}}", image],
                    env=settings.docker_env(),
                    check=False,
                )
                if tags.stdout.strip() == "0":
                    runner.run(
                        ["docker", "image", "rm", image],
                        env=settings.docker_env(),
                        check=False,
                        what="removing an old base image",
                    )
    return names


def base_build_args(settings: Settings) -> dict[str, str]:
    """Compose variables naming the base image each Dockerfile starts FROM."""
    return {
        f"COLORGATE_BASE_{name.upper()}": base.tag(settings.base_source)
        for name, base in BASES.items()
    }
