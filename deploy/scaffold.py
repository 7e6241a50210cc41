"""`invoke init`: a first x-colorgate block for an existing compose file.

It infers what it can from the file (published ports and the services behind them,
`healthcheck:` tests that fetch a URL, well-known database and cache images), marks
what it could not with TODO, and writes the block into a copy of the file, never over
the original. The draft is a start for a person to finish, not a guess to trust.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deploy import contract
from deploy.errors import ContractError

DATABASE_IMAGES = {
    "postgres": "postgresql",
    "postgis": "postgresql",
    "timescale": "postgresql",
    "mysql": "other",
    "mariadb": "other",
    "mongo": "other",
}
SHARED_IMAGES = (
    "redis",
    "valkey",
    "memcached",
    "rabbitmq",
    "elasticsearch",
    "opensearch",
    "minio",
    "nats",
    "kafka",
    "zookeeper",
)
URL_IN_TEST = re.compile(
    r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::(\d+))?(/[^\s'\"]*)?"
)
POSTGRES_URL = re.compile(r"^(postgres(?:ql)?(?:\+\w+)?)://")


@dataclass
class Draft:
    colored: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    routes: list[tuple[str, str, int]] = field(default_factory=list)  # path, service, port
    # service -> (path, how it was found)
    health: dict[str, tuple[str, str]] = field(default_factory=dict)
    database: tuple[str, str] | None = None  # service, kind
    # the colored services' variables that hold a PostgreSQL URL
    url_vars: list[str] = field(default_factory=list)
    scheme: str = "postgresql"  # the scheme those URLs are written with
    todo: list[str] = field(default_factory=list)


def _image_name(service: dict) -> str:
    image = str(service.get("image") or "")
    return image.rsplit("/", 1)[-1].split(":", 1)[0].lower()


def container_port(spec) -> int | None:
    """The container side of a `ports:` entry (short or long syntax)."""
    if isinstance(spec, dict):
        target = spec.get("target")
        return int(target) if str(target).isdigit() else None
    text = str(spec).split("/", 1)[0]
    last = text.rsplit(":", 1)[-1]
    last = last.split("-", 1)[0]
    return int(last) if last.isdigit() else None


def health_from_test(test) -> tuple[int | None, str] | None:
    """(port, path) of the URL a `healthcheck.test` fetches (curl, wget, ...), if any."""
    text = " ".join(test) if isinstance(test, list) else str(test or "")
    match = URL_IN_TEST.search(text)
    if not match:
        return None
    return (int(match[1]) if match[1] else None), (match[2] or "/")


def infer(data: dict) -> Draft:
    """What a compose file says about the contract it needs."""
    draft = Draft()
    services: dict = data.get("services") or {}
    for name, svc in services.items():
        svc = svc or {}
        image = _image_name(svc)
        kind = next((k for prefix, k in DATABASE_IMAGES.items() if image.startswith(prefix)), None)
        if kind and draft.database is None and "build" not in svc:
            draft.shared.append(name)
            draft.database = (name, kind)
            if kind != "postgresql":
                draft.todo.append(
                    f"{name}: not PostgreSQL, so the db.* tasks (backup, verify, move) will refuse"
                )
            continue
        if "build" not in svc and (image.startswith(SHARED_IMAGES) or kind):
            draft.shared.append(name)
            continue
        draft.colored.append(name)
        ports = [p for p in (container_port(spec) for spec in svc.get("ports") or []) if p]
        found = health_from_test((svc.get("healthcheck") or {}).get("test"))
        if ports:  # its `ports:` are left out of what runs (render.dropped)
            draft.routes.append(("/", name, ports[0]))
        if found:
            port, path = found
            draft.health[name] = (path, "from its healthcheck")
            if not ports and port:
                draft.routes.append(("/", name, port))
    _database_urls(draft, services)
    if not draft.colored:
        draft.todo.append(
            "no service to release in two colors was found: list your app's services under colored"
        )
    _guess_routes(draft)
    return draft


def _database_urls(draft: Draft, services: dict) -> None:
    """The variables of the colored services that hold a PostgreSQL URL: Colorgate gives
    them its own, for the app's role."""
    for name in draft.colored:
        env = (services[name] or {}).get("environment") or {}
        pairs = env.items() if isinstance(env, dict) else (str(e).partition("=")[::2] for e in env)
        for var, value in pairs:
            found = POSTGRES_URL.match(str(value or ""))
            if found and draft.database and draft.database[1] == "postgresql":
                draft.scheme = found[1] if found[1] in contract.DATABASE_SCHEMES else "postgresql"
                if var not in draft.url_vars:
                    draft.url_vars.append(var)
                draft.todo.append(
                    f"services.{name}.environment.{var}: its URL (and the password in it) is replaced by "
                    "Colorgate's, as the app's own role; the database's POSTGRES_* come from the settings"
                )


def _guess_routes(draft: Draft) -> None:
    """With several services publishing ports, a guessed path prefix each; a health path
    for every routed service (a TODO where none was found)."""
    paths = [r[0] for r in draft.routes]
    if len(draft.routes) > 1:
        draft.routes = [
            (f"/{svc}/" if i else path, svc, port)
            for i, (path, svc, port) in enumerate(draft.routes)
        ]
        draft.todo.append(
            f"routes: {len(paths)} services publish ports; each now has a guessed path prefix: set the real ones"
        )
    if not draft.routes and draft.colored:
        draft.todo.append(
            f"routes: no published port found: route a path to the service that serves HTTP, e.g. {{path: /, to: {draft.colored[0]}:PORT}}"
        )
    for _, svc, _ in draft.routes:
        if svc not in draft.health:
            draft.health[svc] = (
                "/",
                "TODO: a path that answers 200 only when the service is ready",
            )


def block_text(draft: Draft) -> str:
    """The x-colorgate block as commented YAML."""
    lines = [
        "# Colorgate: how to release this app in two colors (blue/green). Drafted by",
        "# `invoke init`; check every line, finish each TODO, then `invoke render` to see the result.",
        "x-colorgate:",
        "  # released as a blue and a green copy each (web servers, APIs, workers)",
        f"  colored: [{', '.join(draft.colored)}]",
        "  # started once for both colors (databases, caches)",
        f"  shared: [{', '.join(draft.shared)}]",
        "  # the edge's routes: path prefix -> service:port (the longest prefix wins)",
        "  routes:",
    ]
    for path, svc, port in draft.routes:
        lines += [f"    - path: {path}", f"      to: {svc}:{port}"]
    if not draft.routes:
        lines.append("    []  # TODO: add {path: /, to: SERVICE:PORT}")
    lines.append("  # each routed service's health check, asked before traffic moves to it")
    lines.append("  health:")
    for svc, (path, how) in draft.health.items():
        lines.append(f"    {svc}: {{path: {path}}}  # {how}")
    if not draft.health:
        lines.append("    {}")
    lines += [
        "  # TODO (optional): migrations run in the candidate's image before the switch, e.g.",
        "  # migrations: {service: api, command: [npm, run, migrate], status: [npm, run, migrate:status]}",
    ]
    if draft.database:
        svc, kind = draft.database
        lines += [
            "  # the database: backups, verify, restore and db.move work on it (PostgreSQL)",
            "  # TODO: let the app read its URL from the file DATABASE_URL_FILE names and add `file: DATABASE_URL_FILE`",
            "  # (the Hardening gate refuses a secret in a container's environment; COLORGATE_SECRETS_IN_ENV=allow accepts it)",
            f"  database: {{service: {svc}, env: [{', '.join(draft.url_vars or ['DATABASE_URL'])}]"
            + ("" if draft.scheme == "postgresql" else f", scheme: {draft.scheme}")
            + f"{'' if kind == 'postgresql' else ', kind: other'}}}",
        ]
    for item in draft.todo:
        lines.append(f"  # TODO: {item}")
    return "\n".join(lines) + "\n"


def init(source: Path, output: Path | None = None) -> tuple[Path, Draft]:
    """Write a copy of `source` with a drafted x-colorgate block in front of it."""
    source = contract.find_file(source, drafts=False)
    data = contract.read_compose(source)
    if "x-colorgate" in data:
        raise ContractError(
            f"{source} already has an x-colorgate block: edit it, then check it with `invoke render`"
        )
    output = output or source.with_name(f"{source.stem}.colorgate{source.suffix}")
    if output.exists():
        raise ContractError(f"{output} exists already: remove it or pass --output FILE")
    draft = infer(data)
    output.write_text(block_text(draft) + "\n" + source.read_text())
    gates = output.parent / "features" / GATES_MODULE
    if not gates.exists():
        gates.parent.mkdir(exist_ok=True)
        gates.write_text(GATES_TEXT)
    return output, draft


# What `pytest features/` collects in an app's directory: the built-in gates and the app's
# own *.feature files and *steps.py there (Colorgate's pytest plugin brings the rest).
GATES_MODULE = "test_colorgate.py"
GATES_TEXT = '''"""Colorgate's gates for `pytest features/`: the built-in ones (health, no public
database port, TLS, upstream, hardening) and this directory's own *.feature files, with
the step definitions of its *steps.py files. Written by `colorgate init`."""

from colorgate_gates.test_gates import *  # noqa: F401,F403
from colorgate_gates.test_app_features import *  # noqa: F401,F403
'''
