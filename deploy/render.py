"""Rendering an app's contract into what Colorgate runs: the compose file (shared
services as written, a blue and a green copy of each colored one, Colorgate's own parts)
(the edge's nginx routes are deploy/edge/routes.py). Pure functions of the contract.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from deploy.config import shipped
from deploy.contract import (
    APP_SECRETS_DIR,
    COLORS,
    DB_CA_DIR,
    DB_CLIENT_PASSWORD_FILE,
    DB_NETWORK,
    DB_PASSWORD_FILE,
    DB_URL_FILE,
    EDGE_NETWORK,
    OWN_VOLUMES,
    SECRETS_DIR,
    App,
    app_secrets_volume,
    networks_of,
)

OWN_PARTS = shipped("colorgate_parts")  # Colorgate's own services: the edge, dbtools, certbot


def _env_dict(environment) -> dict:
    if isinstance(environment, dict):
        return dict(environment)
    out = {}
    for item in environment or []:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else None
    return out


def network_map(service: dict) -> dict:
    """A compose service's networks as a mapping (from a list, a mapping, or none: `default`)."""
    networks = service.get("networks")
    return (
        dict(networks)
        if isinstance(networks, dict)
        else dict.fromkeys(networks)
        if isinstance(networks, list)
        else {"default": None}
    )


# Every container Colorgate starts is locked down unless its service in the compose
# file says otherwise: a key the service sets itself wins (`read_only: false` for an
# image that writes outside its volumes, `cap_add: [...]`). Limits and log rotation come
# from the settings (COLORGATE_PIDS_LIMIT, _MEMORY_LIMIT, _LOG_*).
LOCKED_DOWN = {
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "read_only": True,
    "tmpfs": ["/tmp"],
    "pids_limit": "${COLORGATE_PIDS_LIMIT:-512}",
    "mem_limit": "${COLORGATE_MEMORY_LIMIT:-1g}",
    "logging": {
        "driver": "json-file",
        "options": {
            "max-size": "${COLORGATE_LOG_MAX_SIZE:-10m}",
            "max-file": "${COLORGATE_LOG_MAX_FILES:-3}",
        },
    },
}
# Shared services (databases, caches) usually run images the team did not write, which
# start as root, take their data directory and step down to their own user (the
# official postgres, redis, mysql images): by default they keep only the capabilities
# for that and a writable root filesystem; everything else is as above. An image that
# runs as its own user from the start can say `cap_add: []` and `read_only: true`.
STEP_DOWN_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
SHARED = {**LOCKED_DOWN, "cap_add": STEP_DOWN_CAPS, "read_only": False}


def locked_down(svc: dict, defaults: dict = LOCKED_DOWN) -> dict:
    """`svc` with every key of `defaults` it does not set itself; no-new-privileges is
    added to a security_opt list it sets, unless that list turns it off."""
    for key, value in defaults.items():
        if key not in svc:
            svc[key] = copy.deepcopy(value)
    opts = svc["security_opt"]
    if isinstance(opts, list) and not any(
        str(o).replace("=", ":").startswith("no-new-privileges") for o in opts
    ):
        opts.append("no-new-privileges:true")
    return svc


OWN_DATABASE_VARS = ("POSTGRES_DB", "POSTGRES_USER")  # the database service's, from the settings


# What Colorgate's compose file leaves out of the app's services (often in a docs' file):
# only the edge publishes host ports (the gates check it), and compose names containers
# per project and color (a fixed container_name collides between colors and stacks).
DROPPED_KEYS = ("ports", "container_name")
# db.move's replication relay (deploy/data/relay.py) listens only once Colorgate opened it
# (RELAY_OPEN, after the database's rules for it are written: it is published at once, so
# until then it answers nobody), and forwards RELAY_CONNECTIONS connections at once at
# most (a subscription needs a few; idle ones cannot use up the database's max_connections).
RELAY_OPEN = "/tmp/colorgate-relay-open"
RELAY_CONNECTIONS = 8
RELAY_SCRIPT = (
    'trap "exit 0" TERM; until [ -e "$1" ]; do sleep 0.1; done; '
    'exec socat "TCP-LISTEN:5433,fork,reuseaddr,max-children=$2" "$3"'
)


def dropped(app: App) -> list[str]:
    lines = []
    for name, svc in app.services.items():
        if (svc or {}).get("ports"):
            why = (
                "the database is reached by its clients only, on Colorgate's networks"
                if app.database and name == app.database.service
                else "the edge routes to it"
                if name in app.routed
                else "only the edge publishes host ports"
            )
            lines.append(f"!! services.{name}.ports: left out: {why}")
        if "container_name" in (svc or {}):
            lines.append(
                f"!! services.{name}.container_name: left out: compose names the containers per project"
                + " and color" * (name in app.colored)
            )
    return lines


def wiring(app: App) -> list[str]:
    """What `invoke render` says of the app's compose file: which variables Colorgate sets
    in which services, and ("!! ") each value of the file it replaces (a URL or a password
    written there stops working: Colorgate gives the app its own role) or leaves out."""
    db = app.postgres or app.database
    if not db:
        return dropped(app)
    lines = [
        f"{var} in {', '.join(db.clients) or '(no client)'}: {what}" for var, what in db.variables()
    ]
    if app.postgres:
        lines.append(
            f"POSTGRES_DB, POSTGRES_USER in {db.service}: from the settings; POSTGRES_PASSWORD_FILE: the path of a file "
            "holding POSTGRES_PASSWORD"
        )
    for name in (db.service, *db.clients):
        own = _env_dict((app.services[name] or {}).get("environment"))
        replaced = (
            [v for v, _ in db.variables()]
            if name in db.clients
            else (["POSTGRES_PASSWORD", *OWN_DATABASE_VARS] if app.postgres else [])
        )
        for var in replaced:
            value = own.get(var)
            if value is not None and not str(value).startswith("${"):
                how = (
                    "removed: the app reads its URL from the file"
                    if var in db.unset
                    else "replaced by Colorgate's"
                )
                lines.append(
                    f"!! services.{name}.environment.{var}: the value written there is {how}"
                )
        for var, value in own.items():
            if var not in replaced and re.search(r"://[^/\s:@]+:[^/\s@]+@", str(value or "")):
                lines.append(
                    f"!! services.{name}.environment.{var}: holds a URL with a password that Colorgate does not set "
                    "(name the variable in x-colorgate.database.env to have Colorgate's URL there)"
                )
    return [*lines, *dropped(app)]


def version_var(color: str) -> str:
    return f"COLORGATE_{color.upper()}_VERSION"


def database_var(color: str, part: str = "url") -> str:
    """The compose variable of a color's database URL (or of one of its parts)."""
    return f"COLORGATE_{color.upper()}_DATABASE_{part.upper()}"


def database_label_var(color: str) -> str:
    """The variable of a color's `org.colorgate.database` label: which database it uses,
    `local` or the URL without its password (what facts read; the URL itself may be a file)."""
    return f"COLORGATE_{color.upper()}_DATABASE_SHOWN"


def secrets_volume(color: str = "") -> str:
    """The volume of secret files of a color's database clients, or ("") of the database."""
    return f"secrets-{color or 'db'}"


def app_secrets_volumes(app: App) -> list[str]:
    return sorted(
        {
            app_secrets_volume(color, name)
            for secret in app.secrets
            for name in secret.services
            for color in COLORS
        }
    )


def _mount(svc: dict, volume: str, path: str) -> None:
    svc["volumes"] = [*(svc.get("volumes") or []), f"{volume}:{path}:ro"]


def _without_dropped(svc: dict | None) -> dict:
    return {
        key: copy.deepcopy(value) for key, value in (svc or {}).items() if key not in DROPPED_KEYS
    }


def compose(app: App, prefix_var: str = "${COLORGATE_IMAGE_PREFIX}") -> dict:
    """The compose file Colorgate runs: shared services as written, two copies of each
    colored one, and Colorgate's own parts. Secrets and versions stay `${...}` variables,
    filled in from the validated settings when compose runs; nothing secret is written."""
    services: dict = {}
    # a database on compose's default network (a file naming no networks) is put on an
    # internal network of Colorgate's with its clients: nothing else reaches it
    own_db_network = bool(
        app.database and networks_of(app.services[app.database.service] or {}) == ["default"]
    )
    for name in app.shared:
        services[name] = _shared(app, name, prefix_var, own_db_network)
    for color in COLORS:
        for name in app.colored:
            services[app.copy_name(name, color)] = _colored_copy(
                app, name, color, prefix_var, own_db_network
            )
    _own_parts(app, services)
    networks = copy.deepcopy(app.raw.get("networks") or {})
    networks[EDGE_NETWORK] = {}
    if own_db_network:
        networks[DB_NETWORK] = {"internal": True}
    volumes = copy.deepcopy(app.raw.get("volumes") or {})
    volumes.update({name: {} for name in (*OWN_VOLUMES, *app_secrets_volumes(app))})
    out = {"services": services, "networks": networks, "volumes": volumes}
    for key in ("configs", "secrets"):
        if app.raw.get(key):
            out[key] = copy.deepcopy(app.raw[key])
    return out


def _shared(app: App, name: str, prefix_var: str, own_db_network: bool) -> dict:
    """A shared service as written, with Colorgate's labels (the database: the settings' superuser, its password a file)."""
    svc = _without_dropped(app.services[name])
    if own_db_network and name == app.database.service:
        svc["networks"] = [DB_NETWORK]
    svc.setdefault("restart", "unless-stopped")
    if app.buildable(name):
        svc.setdefault("image", f"{prefix_var}{name}:latest")
    env = _env_dict(svc.get("environment"))
    if app.postgres and name == app.postgres.service:
        # the settings' database and superuser, whatever the file says (Colorgate connects
        # as them); the password as a file Colorgate puts there (access.stage_secrets), not
        # in the container's environment: PostgreSQL images read POSTGRES_PASSWORD_FILE
        env.pop("POSTGRES_PASSWORD", None)
        env.update({key: "${%s:-}" % key for key in OWN_DATABASE_VARS})
        env["POSTGRES_PASSWORD_FILE"] = f"{SECRETS_DIR}/{DB_PASSWORD_FILE}"
        svc["environment"] = env
        _mount(svc, secrets_volume(), SECRETS_DIR)
    labels = _env_dict(svc.get("labels"))
    labels.update(
        {
            "org.colorgate.role": "database"
            if app.database and name == app.database.service
            else "shared",
            "org.colorgate.service": name,
        }
    )
    svc["labels"] = labels
    return locked_down(svc, SHARED)


def _colored_copy(app: App, name: str, color: str, prefix_var: str, own_db_network: bool) -> dict:
    """`color`'s copy of a colored service: its version's image, its database wiring and secrets, its networks."""
    svc = _without_dropped(app.services[name])
    version = "${%s:-latest}" % version_var(color)
    if app.buildable(name) or "image" not in svc:
        svc["image"] = f"{prefix_var}{name}:{version}"
    svc.setdefault("restart", "unless-stopped")
    env = _env_dict(svc.get("environment"))
    env.update({"COLORGATE_COLOR": color, "COLORGATE_VERSION": version})
    if app.database and name in app.database.clients:
        db = app.database
        for var in db.unset:
            env.pop(var, None)
        for var in db.env:
            env[var] = "${%s:-}" % database_var(color)
        for var in db.file:  # the URL as a file of this color's (access.stage_secrets)
            env[var] = f"{SECRETS_DIR}/{DB_URL_FILE}"
        for part, var in db.parts:
            env[var] = (
                f"{SECRETS_DIR}/{DB_CLIENT_PASSWORD_FILE}"
                if part == "password_file"
                else "${%s:-}" % database_var(color, part)
            )
        if db.reads_files:
            _mount(svc, secrets_volume(color), SECRETS_DIR)
        # a managed database's CA (its URL's sslrootcert), put there by Colorgate
        _mount(svc, "dbca", DB_CA_DIR)
    own = [secret for secret in app.secrets if name in secret.services]
    if own:  # the app's own secrets, each a file of this copy's own volume (access.stage_secrets)
        _mount(svc, app_secrets_volume(color, name), APP_SECRETS_DIR)
        env.update({secret.env: secret.path for secret in own if secret.env})
    svc["environment"] = env
    labels = _env_dict(svc.get("labels"))
    labels.update(
        {
            "org.colorgate.role": "colored",
            "org.colorgate.service": name,
            "org.colorgate.color": color,
        }
    )
    if app.database and name in app.database.clients:
        labels["org.colorgate.database"] = "${%s:-local}" % database_label_var(color)
    svc["labels"] = labels
    networks = network_map(svc)
    if name in app.routed:
        networks[EDGE_NETWORK] = None
    if own_db_network and name in app.database.clients:
        networks[DB_NETWORK] = None
    svc["networks"] = networks
    deps = svc.get("depends_on")
    if deps:
        items = deps.items() if isinstance(deps, dict) else ((d, None) for d in deps)
        renamed = {
            app.copy_name(d, color) if d in app.colored else d: (
                v or {"condition": "service_started"}
            )
            for d, v in items
        }
        svc["depends_on"] = renamed
    return locked_down(svc)


def _own_parts(app: App, services: dict) -> None:
    """Colorgate's own services (compose/colorgate.yml) into `services`, beside the app's."""
    own = yaml.safe_load((OWN_PARTS / "colorgate.yml").read_text())
    db_networks = list(network_map(services[app.database.service])) if app.database else []
    for name, svc in own["services"].items():
        build = svc.get("build")
        if isinstance(build, dict) and "context" in build:
            build["context"] = str(OWN_PARTS / build["context"])
        if name in ("dbtools", "dbrelay"):
            svc["networks"] = list(dict.fromkeys([*db_networks, EDGE_NETWORK]))
            if app.database:
                svc.setdefault("environment", {})["PGHOST"] = app.database.service
                if name == "dbrelay":
                    svc["entrypoint"] = [
                        "sh",
                        "-c",
                        RELAY_SCRIPT,
                        "dbrelay",
                        RELAY_OPEN,
                        str(RELAY_CONNECTIONS),
                        f"TCP:{app.database.service}:5432",
                    ]
        services[name] = locked_down(svc)
    # certbot (one-off, and the renewer) for an ACME directory on the host's own loopback
    # (a test CA) only: the host's network
    for name in ("certbot", "renewer"):
        loopback = copy.deepcopy(services[name])
        del loopback["networks"]
        loopback["network_mode"] = "host"
        loopback["labels"] = {**loopback["labels"], "org.colorgate.role": f"{name}-loopback"}
        services[f"{name}-loopback"] = loopback


def dump(rendered: dict, source: Path, wired: list[str] = ()) -> str:
    header = (
        f"# Generated by Colorgate from {source} (its x-colorgate block): do not edit.\n"
        "# `invoke render` prints it; values in ${...} come from the validated settings.\n"
        + "".join(f"# {line}\n" for line in wired)
    )
    return header + yaml.safe_dump(rendered, sort_keys=False, default_flow_style=False, width=120)
