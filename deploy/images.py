"""Images: Debian base images made without a registry, and the stack's app images.

Base images come from Debian's own mirror (mmdebstrap, then `docker import`), with
every package the image needs included at build time, so nothing in a Dockerfile
needs network access. Their tag carries a hash of what went in, so a changed package
list makes a new base image; an unchanged one is made again once older than
COLORGATE_BASE_MAX_AGE (refresh_bases), so Debian's security updates reach it.

App images are built by `docker compose build` (BuildKit in the engine; no buildx
plugin needed) and tagged `<prefix><name>:<version>` plus `latest`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path

import httpx

from deploy.target import runner
from deploy.config import Settings
from deploy.errors import ColorgateError, CommandError, ConfigError, RegistryError

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
    "rclone": BaseImage(
        "rclone", ("rclone", "ca-certificates")
    ),  # off-host backup copies (made on first use)
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
            if (
                settings.bases == "image"
            ):  # the legacy builder: it uses a FROM image the engine has, and pulls one it lacks
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
            for image in filter(
                None, replaced
            ):  # only once untagged (another name may still hold it), and unused
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


def base_build_args(settings: Settings) -> dict[str, str]:
    """Compose variables naming the base image each Dockerfile starts FROM."""
    return {
        f"COLORGATE_BASE_{name.upper()}": base.tag(settings.base_source)
        for name, base in BASES.items()
    }


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


# --- a registry ------------------------------------------------------------------


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
    scheme = (
        "http" if server.split(":")[0] in ("127.0.0.1", "localhost") else "https"
    )  # as the engine trusts loopback
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


# --- no registry: stream over SSH ------------------------------------------------------


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
