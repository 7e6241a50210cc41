"""The app contract (x-colorgate): validation with one line per problem, naming the
path and the fix, before anything starts; rendering of the colored copies; the edge's
routes. Pure: no Docker."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from deploy import config, contract, edge, profiles, render, swarmfile, urls
from deploy.errors import ContractError

ROOT = config.project_root()

BASE = {
    "x-colorgate": {
        "colored": ["web", "api", "worker"],
        "shared": ["db", "cache"],
        "routes": [
            {"path": "/api/", "to": "api:3000", "websocket": True, "timeout": 300},
            {"path": "/", "to": "web:80", "body_size": "1m"},
        ],
        "health": {
            "api": {"path": "/api/healthz", "json": {"db": "ok", "ready": True}},
            "web": "/",
        },
        "migrations": {
            "service": "api",
            "command": ["npm", "run", "migrate"],
            "status": ["npm", "run", "migrate:status"],
        },
        "database": {"service": "db", "env": "PG_URL"},
    },
    "services": {
        "web": {"build": "web", "networks": ["front"]},
        "api": {
            "build": {"context": "api"},
            "networks": ["front", "back"],
            "depends_on": ["db", "worker"],
            "environment": ["NODE_ENV=production", "FLAG"],
        },
        "worker": {"build": "api", "command": ["node", "worker.js"], "networks": ["back"]},
        "db": {
            "image": "postgres:16",
            "networks": ["back"],
            "volumes": ["data:/var/lib/postgresql/data"],
        },
        "cache": {"image": "redis:7", "networks": ["back"]},
    },
    "networks": {"front": {}, "back": {"internal": True}},
    "volumes": {"data": {}},
}


def app_with(**changes) -> dict:
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return data


def test_a_good_contract_is_read_with_its_defaults():
    app = contract.parse(BASE)
    assert app.colored == ("web", "api", "worker") and app.shared == ("db", "cache")
    assert app.routed == ("api", "web")
    api = app.routes[0]
    assert (api.path, api.service, api.port, api.websocket, api.timeout, api.buffering) == (
        "/api/",
        "api",
        3000,
        True,
        300,
        True,
    )
    assert app.health["web"] == contract.Health("web", "/", 80)
    assert app.health["api"].json == (("db", "ok"), ("ready", "true"))
    assert app.migrations.command == ("npm", "run", "migrate")
    # the block's commands read `$` as a service's command: does: `$$` reaches the shell as `$`
    shell = contract.parse(
        app_with(
            **{
                "x-colorgate__migrations__command": [
                    "sh",
                    "-c",
                    'migrate --url "$$(cat $$DB_FILE)" --cost $$$$',
                ]
            }
        )
    )
    assert shell.migrations.command == ("sh", "-c", 'migrate --url "$(cat $DB_FILE)" --cost $$')
    # the database's clients: the colored services on its networks (not the frontend)
    assert app.database == contract.Database("db", ("PG_URL",), ("api", "worker"))
    assert app.route_for("/api/x").service == "api" and app.route_for("/deep/link").service == "web"
    assert app.split_copy("worker_green") == ("worker", "green") and app.split_copy("db") is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"x-colorgate__colored": ["web", "api", "wroker"]},
            r"^x-colorgate.colored\[2\]: unknown service 'wroker' \(did you mean 'worker'\?\)$",
        ),
        (
            {"x-colorgate__routes": [{"path": "/", "to": "db:5432"}]},
            r"^x-colorgate.routes\[0\]: service 'db' is not colored: route only to colored services$",
        ),
        (
            {"x-colorgate__routes": [{"path": "/", "to": "web"}]},
            r"^x-colorgate.routes\[0\].to: should be service:port, such as api:3000 \(got 'web'\)$",
        ),
        (
            {
                "x-colorgate__routes": [
                    {"path": "/", "to": "web:80", "app_headers": ["X-Powered-By"]}
                ]
            },
            r"^x-colorgate.routes\[0\].app_headers: 'X-Powered-By' is not a header the edge sets: name one of Strict-Transport-Security, ",
        ),
        (
            {
                "x-colorgate__routes": [
                    {"path": "/", "to": "web:80", "app_headers": "Content-Security-Policy"}
                ]
            },
            r"^x-colorgate.routes\[0\].app_headers: should be a list of header names, such as \[Content-Security-Policy\]$",
        ),
        (
            {
                "x-colorgate__routes": [
                    {"path": "api/", "to": "api:3000"},
                    {"path": "/", "to": "web:80"},
                ]
            },
            r"^x-colorgate.routes\[0\].path: must start with / \(got 'api/'\)$",
        ),
        (
            {"x-colorgate__health__api": {"path": "healthz"}},
            r"^x-colorgate.health.api.path: must start with / \(got 'healthz'\)$",
        ),
        (
            {"x-colorgate__database": ["db", "cache"]},
            r"^x-colorgate.database: name one database service \(two databases are not supported\)$",
        ),
        (
            {"x-colorgate__database": {"service": ["db", "cache"]}},
            r"^x-colorgate.database.service: name one database service",
        ),
        (
            {"services__web__network_mode": "host"},
            r"^services.web: a colored service cannot use the host's network \(its two copies would share its ports\): remove `network_mode: host`",
        ),
        (
            {"x-colorgate__shared": ["db"]},
            r"^x-colorgate: service 'cache' is neither colored nor shared: add it to one of them$",
        ),
        (
            {"x-colorgate__shared": ["db", "cache", "web"]},
            r"^x-colorgate: 'web' is both colored and shared",
        ),
        (
            {"x-colorgate__health__web": None},
            r"^x-colorgate.health: routed service 'web' has no health check: add \{path: /health\} for it$",
        ),
        (
            {"x-colorgate__migrations__service": "db"},
            r"^x-colorgate.migrations.service: 'db' is not colored",
        ),
        (
            {"x-colorgate__migrations__command": "npm run migrate"},
            r"^x-colorgate.migrations.command: should be a command as a list",
        ),
        (
            {"x-colorgate__migrations__cheap": "yes"},
            r"^x-colorgate.migrations.cheap: should be true or false",
        ),
        (
            {"x-colorgate__migrations__command": ["sh", "-c", "migrate --url $DB_URL"]},
            r"^x-colorgate.migrations.command\[2\]: '\$DB_URL' has a lone '\$': write '\$\$DB_URL' as in a service's command: ",
        ),
        (
            {"x-colorgate__database__service": "api"},
            r"^x-colorgate.database.service: 'api' is not shared",
        ),
        (
            {
                "x-colorgate__routes": [
                    {"path": "/", "to": "web:80"},
                    {"path": "/", "to": "api:3000"},
                ]
            },
            r"^x-colorgate.routes: the path '/' is routed twice: keep one$",
        ),
        (
            {"x-colorgate__routes": [{"path": "/", "to": "web:80", "timout": 5}]},
            r"^x-colorgate.routes\[0\]: unknown key 'timout': did you mean 'timeout'\?$",
        ),
        (
            {"x-colorgate__routes": [{"path": "/", "to": "web:80", "body_size": "lots"}]},
            r"body_size: should be a size such as 10m",
        ),
        ({"x-colorgate__routes": []}, r"^x-colorgate.routes: add at least one route"),
        ({"x-colorgate__colored": []}, r"^x-colorgate.colored: name at least one service"),
        (
            {"x-colorgate__helth": {}},
            r"^x-colorgate: unknown key 'helth': did you mean 'health'\?$",
        ),
        (
            {"services__edge": {"image": "nginx"}},
            r"^services.edge: the name 'edge' is Colorgate's own",
        ),
        (
            {"volumes__backups": {}},
            r"^volumes.backups: the name 'backups' is one of Colorgate's volumes",
        ),
        (
            {"services__cache__depends_on": ["api"]},
            r"^services.cache.depends_on: a shared service cannot depend on the colored 'api'$",
        ),
        (
            {"x-colorgate__health__worker": {"path": "/ping"}},
            r"^x-colorgate.health.worker.port: 'worker' has no route, so name the port",
        ),
        (
            {"x-colorgate__database__clients": ["web", "db"]},
            r"^x-colorgate.database.clients: 'db' is not colored",
        ),
        (
            {"x-colorgate__database__file": "PG URL"},
            r"^x-colorgate.database.file: should be an environment variable name such as DATABASE_URL_FILE",
        ),
        ({"x-colorgate": None}, r"has no x-colorgate block: add one \(`invoke init --compose"),
        (
            {
                "x-colorgate__routes": [
                    {"path": "/", "to": "web:80", "analysis": {"max_error_ratio": 5}}
                ]
            },
            r"^x-colorgate.routes\[0\].analysis.max_error_ratio: should be a share from 0 to 1, such as 0.05 for 5%$",
        ),
        (
            {"x-colorgate__routes": [{"path": "/", "to": "web:80", "analysis": {"max_p95": 500}}]},
            r"^x-colorgate.routes\[0\].analysis: unknown key 'max_p95': did you mean 'max_p95_ms'\?$",
        ),
    ],
)
def test_a_bad_contract_is_one_line_naming_the_path(changes, message):
    with pytest.raises(ContractError, match=message) as err:
        contract.parse(app_with(**changes))
    assert "\n" not in str(err.value)


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(ContractError, match=r"does not exist: set COLORGATE_APP"):
        contract.load(tmp_path / "nope.yml")
    with pytest.raises(
        ContractError, match=r"^no compose file in .*: expected one of compose.yaml"
    ):
        contract.load(tmp_path)
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web: [unclosed\n")
    with pytest.raises(ContractError, match=r"is not valid YAML at line \d+"):
        contract.load(bad)
    bad.write_text("just: text\n")
    with pytest.raises(
        ContractError, match=r"is not a compose file: it has no `services:` mapping"
    ):
        contract.load(bad)


def test_a_bad_contract_stops_loading_the_settings(tmp_path):
    app = tmp_path / "compose.yaml"
    app.write_text(
        yaml.safe_dump(app_with(**{"x-colorgate__routes": [{"path": "/", "to": "db:5432"}]}))
    )
    (tmp_path / ".env.development").write_text(
        f"COLORGATE_HTTP_PORT=8080\nCOLORGATE_HTTPS_PORT=8443\nCOLORGATE_APP={app}\n"
    )
    with pytest.raises(
        ContractError, match=r"^x-colorgate.routes\[0\]: service 'db' is not colored"
    ):
        profiles.load("development", root=tmp_path, environ={})


def test_an_app_without_a_database_needs_no_database_settings(tmp_path):
    data = app_with(**{"x-colorgate__database": None, "x-colorgate__migrations": None})
    app = tmp_path / "compose.yaml"
    app.write_text(yaml.safe_dump(data))
    (tmp_path / ".env.staging").write_text(
        f"COLORGATE_HTTP_PORT=80\nCOLORGATE_HTTPS_PORT=443\nCOLORGATE_DOMAIN=app.example.org\nCOLORGATE_APP={app}\n"
    )
    s = profiles.load("staging", root=tmp_path, environ={})
    assert s.app.database is None and s.app_database_url() == ""


def test_rendering_makes_two_copies_of_each_colored_service():
    app = contract.parse(BASE)
    out = render.compose(app)
    services = out["services"]
    assert set(services) == {
        "db",
        "cache",
        "edge",
        "dbtools",
        "dbrelay",
        "certbot",
        "certbot-loopback",
        "renewer",
        "renewer-loopback",
        *(f"{s}_{c}" for s in ("web", "api", "worker") for c in ("blue", "green")),
    }
    api = services["api_green"]
    assert api["image"] == "${COLORGATE_IMAGE_PREFIX}api:${COLORGATE_GREEN_VERSION:-latest}"
    assert api["environment"] == {
        "NODE_ENV": "production",
        "FLAG": None,
        "COLORGATE_COLOR": "green",
        "COLORGATE_VERSION": "${COLORGATE_GREEN_VERSION:-latest}",
        "PG_URL": "${COLORGATE_GREEN_DATABASE_URL:-}",
    }
    # routed copies join the edge's network; depends_on follows the copy's own color
    assert set(api["networks"]) == {"front", "back", contract.EDGE_NETWORK}
    assert (
        set(services["worker_blue"]["networks"]) == {"back"}
        and "PG_URL" in services["worker_blue"]["environment"]
    )
    assert "PG_URL" not in services["web_blue"]["environment"]
    assert api["depends_on"] == {
        "db": {"condition": "service_started"},
        "worker_green": {"condition": "service_started"},
    }
    assert api["labels"] == {
        "org.colorgate.role": "colored",
        "org.colorgate.service": "api",
        "org.colorgate.color": "green",
        "org.colorgate.database": "${COLORGATE_GREEN_DATABASE_SHOWN:-local}",
    }  # which one, for status and gates
    assert "org.colorgate.database" not in services["web_green"]["labels"]
    # shared services as written (with a restart policy); the database is labelled as such
    assert (
        services["db"]["image"] == "postgres:16"
        and services["db"]["labels"]["org.colorgate.role"] == "database"
    )
    # Colorgate's own parts come from its package, reach the database, and hold no secret
    assert Path(services["edge"]["build"]["context"]).is_absolute()
    assert (
        services["dbtools"]["networks"] == ["back", contract.EDGE_NETWORK]
        and services["dbtools"]["environment"]["PGHOST"] == "db"
    )
    assert services["dbrelay"]["entrypoint"][-1] == "TCP:db:5432"
    assert (
        out["networks"]["back"] == {"internal": True} and contract.EDGE_NETWORK in out["networks"]
    )
    assert "s3cret" not in render.dump(out, Path("x"))
    # the user's file is left as it was
    assert "api_green" not in BASE["services"] and BASE["services"]["api"]["environment"] == [
        "NODE_ENV=production",
        "FLAG",
    ]


def test_secrets_reach_the_database_and_its_clients_as_read_only_files():
    data = app_with(
        **{
            "x-colorgate__database__file": "PG_URL_FILE",
            "services__db__environment": {
                "POSTGRES_USER": "app",
                "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-}",
            },
        }
    )
    services = render.compose(contract.parse(data))["services"]
    db, api, worker = services["db"], services["api_blue"], services["worker_green"]
    # the database gets its password as a file of its own volume, not in its environment
    # and the database and superuser of the settings, which Colorgate connects as, whatever the file says
    assert db["environment"] == {
        "POSTGRES_USER": "${POSTGRES_USER:-}",
        "POSTGRES_DB": "${POSTGRES_DB:-}",
        "POSTGRES_PASSWORD_FILE": "/run/colorgate-secrets/postgres_password",
    }
    assert (
        "secrets-db:/run/colorgate-secrets:ro" in db["volumes"]
        and "data:/var/lib/postgresql/data" in db["volumes"]
    )
    # each color's clients: the file's path, their color's volume, no URL
    assert (
        api["environment"]["PG_URL_FILE"] == "/run/colorgate-secrets/database_url"
        and "PG_URL" not in api["environment"]
    )
    assert (
        "secrets-blue:/run/colorgate-secrets:ro" in api["volumes"]
        and "secrets-green:/run/colorgate-secrets:ro" in worker["volumes"]
    )
    assert (
        "dbtools" in services
        and "secrets-tools:/run/colorgate-secrets:ro" in services["dbtools"]["volumes"]
    )
    assert "PGPASSWORD" not in services["dbtools"]["environment"]
    # not a database client
    assert not any("secrets" in v for v in services["web_blue"].get("volumes") or [])
    # without `file`, the URL stays in the variable the app reads (the Hardening gate then objects)
    plain = render.compose(contract.parse(BASE))["services"]
    assert plain["api_blue"]["environment"]["PG_URL"] == "${COLORGATE_BLUE_DATABASE_URL:-}"


def test_an_app_reads_its_database_from_several_variables_a_scheme_of_its_own_or_the_parts_of_the_url():
    """Apps as they are: two variables with the URL, SQLAlchemy's scheme, or no URL at all."""
    two = contract.parse(
        app_with(
            **{
                "x-colorgate__database": {
                    "service": "db",
                    "env": ["DATABASE_URL", "DB_DSN"],
                    "scheme": "postgresql+psycopg",
                }
            }
        )
    )
    api = render.compose(two)["services"]["api_green"]["environment"]
    assert api["DATABASE_URL"] == api["DB_DSN"] == "${COLORGATE_GREEN_DATABASE_URL:-}"
    assert (
        urls.app_url("postgresql://app:p%40ss@db:5432/shop", two.database.scheme, managed=False)
        == "postgresql+psycopg://app:p%40ss@db:5432/shop"
    )
    assert (
        urls.app_url("postgres://app:x@db/shop", managed=False) == "postgresql://app:x@db/shop"
        and urls.app_url("", "postgres") == ""
    )
    parts = contract.parse(
        app_with(
            **{
                "x-colorgate__database": {
                    "service": "db",
                    "parts": {
                        "host": "DB_HOST",
                        "port": "DB_PORT",
                        "name": "DB_NAME",
                        "user": "DB_USER",
                        "password_file": "DB_PASSWORD_FILE",
                    },
                }
            }
        )
    )
    api = render.compose(parts)["services"]["api_blue"]
    assert {k: v for k, v in api["environment"].items() if k.startswith("DB_")} == {
        "DB_HOST": "${COLORGATE_BLUE_DATABASE_HOST:-}",
        "DB_PORT": "${COLORGATE_BLUE_DATABASE_PORT:-}",
        "DB_NAME": "${COLORGATE_BLUE_DATABASE_NAME:-}",
        "DB_USER": "${COLORGATE_BLUE_DATABASE_USER:-}",
        "DB_PASSWORD_FILE": "/run/colorgate-secrets/database_password",
    }
    assert (
        "DATABASE_URL" not in api["environment"]
        and "secrets-blue:/run/colorgate-secrets:ro" in api["volumes"]
    )
    assert urls.url_parts("postgresql://app_role:p%40ss@db.internal/shop%2Deu?sslmode=require") == {
        "host": "db.internal",
        "port": "5432",
        "name": "shop-eu",
        "user": "app_role",
        "password": "p@ss",
    }
    for bad, message in (
        (
            {"parts": {"pass": "X"}},
            r"^x-colorgate.database.parts: unknown part 'pass': use host, port",
        ),
        (
            {"env": ["OK", "not ok"]},
            r"^x-colorgate.database.env: should be an environment variable name such as DATABASE_URL, or a list of them$",
        ),
        (
            {"scheme": "mysql"},
            r"^x-colorgate.database.scheme: should be one of postgresql, postgres, ",
        ),
    ):
        with pytest.raises(ContractError, match=message):
            contract.parse(app_with(**{"x-colorgate__database": {"service": "db", **bad}}))


def test_a_url_the_compose_file_writes_beside_the_file_the_app_reads_is_removed():
    """Miniflux reads DATABASE_URL_FILE, and its documented compose file writes DATABASE_URL
    with a password: named in `env` beside `file`, that variable is removed."""
    data = app_with(
        **{
            "x-colorgate__database": {
                "service": "db",
                "file": "DATABASE_URL_FILE",
                "env": "DATABASE_URL",
                "scheme": "postgres",
            },
            "services__api__environment": [
                "DATABASE_URL=postgres://miniflux:secret@db/miniflux",
                "RUN_MIGRATIONS=1",
            ],
        }
    )
    app = contract.parse(data)
    api = render.compose(app)["services"]["api_blue"]["environment"]
    assert (
        "DATABASE_URL" not in api
        and api["DATABASE_URL_FILE"] == "/run/colorgate-secrets/database_url"
        and api["RUN_MIGRATIONS"] == "1"
    )
    assert (
        "!! services.api.environment.DATABASE_URL: the value written there is removed: the app reads its URL from the file"
        in render.wiring(app)
    )


def test_a_database_on_the_default_network_is_moved_to_an_internal_one_with_its_clients():
    data = app_with(
        **{
            "services__db__networks": None,
            "services__api__networks": None,
            "services__worker__networks": None,
        }
    )
    rendered = render.compose(contract.parse(data))
    services = rendered["services"]
    assert services["db"]["networks"] == ["colorgate-db"] and rendered["networks"][
        "colorgate-db"
    ] == {"internal": True}
    assert set(services["api_blue"]["networks"]) == {
        "default",
        "colorgate",
        "colorgate-db",
    }  # still reaches the world
    assert "colorgate-db" in services["dbtools"]["networks"]
    # a database on networks of the file's own is left on them
    assert "colorgate-db" not in render.compose(contract.parse(BASE))["networks"]
    with pytest.raises(
        ContractError,
        match=r"^networks.colorgate-db: the name is one of Colorgate's networks: rename it$",
    ):
        contract.parse(app_with(**{"networks__colorgate-db": {}}))


def test_render_says_which_variables_colorgate_sets_and_which_values_of_the_app_it_replaces():
    data = app_with(
        **{
            "x-colorgate__database": {"service": "db", "file": "PG_URL_FILE", "clients": ["api"]},
            "services__api__environment": {
                "PG_URL_FILE": "/etc/app/db",
                "CACHE_URL": "redis://u:pw@cache:6379",
            },
            "services__db__environment": {
                "POSTGRES_USER": "shop",
                "POSTGRES_PASSWORD": "secret",
                "POSTGRES_DB": "${POSTGRES_DB}",
            },
        }
    )
    lines = render.wiring(contract.parse(data))
    assert lines[0] == "PG_URL_FILE in api: the path of a file holding the URL"
    assert [line for line in lines if line.startswith("!! ")] == [
        "!! services.db.environment.POSTGRES_PASSWORD: the value written there is replaced by Colorgate's",
        "!! services.db.environment.POSTGRES_USER: the value written there is replaced by Colorgate's",
        "!! services.api.environment.PG_URL_FILE: the value written there is replaced by Colorgate's",
        "!! services.api.environment.CACHE_URL: holds a URL with a password that Colorgate does not set "
        "(name the variable in x-colorgate.database.env to have Colorgate's URL there)",
    ]
    assert "# PG_URL_FILE in api: the path of a file holding the URL\n" in render.dump(
        render.compose(contract.parse(data)), Path("x"), lines
    )


def test_the_ports_and_container_names_of_a_docs_compose_file_are_left_out_and_said():
    """Upstream compose files publish the app's and the database's ports and name their
    containers (MLflow's does both): Colorgate runs them without, and says so."""
    data = app_with(
        **{
            "services__web__ports": ["5000:5000"],
            "services__web__container_name": "web-server",
            "services__db__ports": ["5432:5432"],
            "services__db__container_name": "app-postgres",
            "services__cache__ports": ["6379:6379"],
        }
    )
    app = contract.parse(data)
    services = render.compose(app)["services"]
    for name in ("web_blue", "web_green", "db", "cache"):
        assert "ports" not in services[name] and "container_name" not in services[name], name
    assert [
        line for line in render.wiring(app) if ".ports" in line or "container_name" in line
    ] == [
        "!! services.web.ports: left out: the edge routes to it",
        "!! services.web.container_name: left out: compose names the containers per project and color",
        "!! services.db.ports: left out: the database is reached by its clients only, on Colorgate's networks",
        "!! services.db.container_name: left out: compose names the containers per project",
        "!! services.cache.ports: left out: only the edge publishes host ports",
    ]
    assert app.services["web"]["ports"] == [
        "5000:5000"
    ]  # the app's own file is read, never changed


def test_every_container_is_locked_down_unless_its_service_says_otherwise():
    data = copy.deepcopy(BASE)
    # the official postgres image starts as root and steps down: its service says what it needs
    data["services"]["db"].update(
        {
            "cap_add": ["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"],
            "read_only": False,
            "security_opt": ["seccomp=default"],
            "mem_limit": "4g",
        }
    )
    services = render.compose(contract.parse(data))["services"]
    for name, svc in services.items():
        assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"], name
        assert (
            svc["pids_limit"] == "${COLORGATE_PIDS_LIMIT:-512}"
            and svc["logging"]["driver"] == "json-file"
        ), name
    for name in ("web_blue", "api_green", "worker_blue", "edge", "dbrelay"):
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"], name
        assert (
            services[name]["mem_limit"] == "${COLORGATE_MEMORY_LIMIT:-1g}"
            and "cap_add" not in services[name]
        ), name
    # a shared service's image (redis:7 here) starts as root and steps down: only that is kept by default
    cache = services["cache"]
    assert (
        cache["cap_add"] == render.STEP_DOWN_CAPS
        and cache["read_only"] is False
        and cache["tmpfs"] == ["/tmp"]
    )
    db = services["db"]  # its own keys win; no-new-privileges is added to the options it sets
    assert db["read_only"] is False and db["mem_limit"] == "4g" and db["cap_add"][0] == "CHOWN"
    assert db["security_opt"] == ["seccomp=default", "no-new-privileges:true"]
    # Colorgate's own exceptions, each said in compose/colorgate.yml
    assert services["dbtools"]["read_only"] is False
    # certbot runs as the edge's user (its image's USER) with no capability and a read-only root
    certbot = services["certbot"]
    assert (
        "cap_add" not in certbot and certbot["read_only"] is True and certbot["cap_drop"] == ["ALL"]
    )
    assert certbot["tmpfs"] == [
        "/tmp",
        "/var/lib/letsencrypt:uid=10003,gid=10003",
        "/var/log/letsencrypt:uid=10003,gid=10003",
    ]
    # certbot is on Colorgate's network; only its copy for a directory on the host's loopback has the host's
    assert (
        services["certbot"]["networks"] == [contract.EDGE_NETWORK]
        and "network_mode" not in services["certbot"]
    )
    assert (
        services["certbot-loopback"]["network_mode"] == "host"
        and "networks" not in services["certbot-loopback"]
    )
    # the renewer on the server too, kept running, a tool `up` does not start by itself
    renewer = services["renewer"]
    assert (
        renewer["read_only"] is True
        and renewer["cap_drop"] == ["ALL"]
        and renewer["tmpfs"] == certbot["tmpfs"]
    )
    assert (
        renewer["restart"] == "unless-stopped"
        and renewer["profiles"] == ["tools"]
        and renewer["image"] == certbot["image"]
    )
    assert (
        services["renewer-loopback"]["network_mode"] == "host"
        and "networks" not in services["renewer-loopback"]
    )
    off = copy.deepcopy(BASE)
    off["services"]["cache"]["security_opt"] = ["no-new-privileges=false"]
    assert render.compose(contract.parse(off))["services"]["cache"]["security_opt"] == [
        "no-new-privileges=false"
    ]


def test_the_edge_routes_follow_the_contract():
    text = edge.edge_routes(contract.parse(BASE))
    api_at, web_at = text.index("location ^~ /api/ {"), text.index("location ^~ / {")
    assert api_at < web_at  # the longest prefix first (nginx picks the longest anyway)
    api, web = text[api_at:web_at], text[web_at:]
    assert (
        "proxy_pass http://api_$cg_color:3000;" in api
        and "set $cg_websocket 1;" in api
        and "proxy_read_timeout 300s;" in api
    )
    assert (
        "proxy_pass http://web_$cg_color:80;" in web
        and "client_max_body_size 1m;" in web
        and "websocket" not in web
    )
    # every route asks colorgate.lua for the live color (and the write freeze) per request
    assert all(
        'access_by_lua_block { require("colorgate").route() }' in block for block in (api, web)
    )
    assert " if (" not in text  # no nginx `if`: the route's decisions are in the access phase


def test_the_edge_replaces_an_apps_own_security_headers_unless_a_route_lets_the_app_own_them():
    """Each security header the edge sets is hidden from the app's answer, then added:
    one value, the edge's. A route that owns some repeats the edge's other headers
    (nginx inherits none into a location that sets its own) and leaves the app's."""
    data = copy.deepcopy(BASE)
    data["x-colorgate"]["routes"][0]["app_headers"] = [
        "content-security-policy",
        "Strict-Transport-Security",
    ]
    app = contract.parse(data)
    assert app.routes[0].app_headers == ("Content-Security-Policy", "Strict-Transport-Security")
    text = edge.edge_routes(app)
    server, api, web = (
        text[: text.index("location")],
        text[text.index("location ^~ /api/ {") : text.index("location ^~ / {")],
        text[text.index("location ^~ / {") :],
    )
    for name, value in contract.SECURITY_HEADERS.items():
        assert (
            f"proxy_hide_header {name};" in server
            and f'add_header {name} "{value}" always;' in server
        )
        assert (
            (f"proxy_hide_header {name};" in api)
            is (f"add_header {name} " in api)
            is (name not in app.routes[0].app_headers)
        )
    assert "add_header" not in web  # inherits the server's
    for block in (server, api):
        assert (
            "proxy_hide_header X-Colorgate-Color;" in block
            and "add_header X-Colorgate-Color $cg_color always;" in block
        )
        assert (
            "add_header Set-Cookie $cg_cookie always;" in block
            and "proxy_hide_header Set-Cookie" not in block
        )


def test_the_shipped_example_is_a_valid_contract():
    app = contract.load(ROOT / "examples" / "spa-api-postgres")
    assert app.postgres and app.migrations and app.features_dir.is_dir()


def test_no_sample_literal_in_the_engine_steps_or_builtin_features():
    """The engine learns an app from its contract: nothing in deploy/, steps/ or the
    built-in features names a service, port or path of the examples."""
    literals = [
        r"\bfrontend",
        r"(?<!client )\bbackend\b",
        r"backend_(blue|green|\{)",
        "/api/",
        r"\b8000\b",
        "colorgate-sample",
        "/patients",
        "migrate.py",
        r"postgres-1",
        r"applied=N",
        r"\bnotes\b",
        r"x-colorgate-color.*self",
    ]
    found = []
    for folder, pattern in (("deploy", "*.py"), ("steps", "*.py"), ("features", "*")):
        for path in (ROOT / folder).glob(pattern):
            if path.is_file():
                text = path.read_text()
                found += [
                    f"{path.relative_to(ROOT)}: {lit}" for lit in literals if re.search(lit, text)
                ]
    assert not found, found


def test_services_without_a_way_out_are_named():
    """A database client on internal networks only could not reach a managed database."""
    app = contract.parse(BASE)
    assert app.without_egress(app.database_clients()) == [
        "worker"
    ]  # api is routed: it has the edge's network
    moved = contract.parse(app_with(**{"services__worker__networks": ["back", "front"]}))
    assert moved.without_egress(moved.database_clients()) == []


def test_the_readme_reference_is_a_valid_contract():
    """The annotated block in README.md parses, given services of those names."""
    block = re.search(
        r"```yaml\n(x-colorgate:.*?)```", (ROOT / "README.md").read_text(), re.S
    ).group(1)
    data = yaml.safe_load(block)
    data["services"] = {
        **{n: {"build": "."} for n in data["x-colorgate"]["colored"]},
        **{n: {"image": "postgres:16"} for n in data["x-colorgate"]["shared"]},
    }
    app = contract.parse(data)
    assert app.routed == ("api", "web") and app.migrations.service == "api"
    assert (app.database.file, app.database.env, app.database.scheme) == (
        ("DATABASE_URL_FILE",),
        (),
        "postgresql",
    )


def test_a_route_may_carry_its_own_analysis_bounds():
    app = contract.parse(
        app_with(
            **{
                "x-colorgate__routes": [
                    {
                        "path": "/api/export",
                        "to": "api:3000",
                        "analysis": {"max_p95_ms": 5000, "max_error_ratio": 0.05},
                    },
                    {"path": "/", "to": "web:80"},
                ]
            }
        )
    )
    export, web = app.routes
    assert (export.max_p95_ms, export.max_error_ratio, export.own_bounds) == (5000, 0.05, True)
    assert (web.max_p95_ms, web.max_error_ratio, web.own_bounds) == (None, None, False)


def test_variables_are_filled_in_as_compose_fills_them():
    env = {"A": "1", "EMPTY": ""}
    assert swarmfile.interpolate(
        {"x": ["${A}", "${B:-two}", "${EMPTY:-d}", "${B}", "k=${A}"]}, env
    ) == {"x": ["1", "two", "d", "", "k=1"]}


def test_the_swarm_stack_is_the_same_rendering_made_for_a_swarm():
    app = contract.parse(BASE)
    env = {
        "COLORGATE_BIND": "0.0.0.0",
        "COLORGATE_IMAGE_PREFIX": "reg.example/acme/",
        "COLORGATE_BLUE_VERSION": "v7",
        "COLORGATE_HTTPS_PORT": "443",
        "COLORGATE_HTTP_PORT": "80",
        "COLORGATE_MEMORY_LIMIT": "512m",
    }
    out = swarmfile.render(app, env, replicas={"api": 3})
    services = out["services"]
    # Colorgate's tools run as one-off containers, not services; certbot on the host's network neither
    assert set(services) == {
        "web_blue",
        "web_green",
        "api_blue",
        "api_green",
        "worker_blue",
        "worker_green",
        "db",
        "cache",
        "edge",
    }
    api = services["api_blue"]
    assert (
        api["image"] == "reg.example/acme/api:v7"
        and services["api_green"]["image"] == "reg.example/acme/api:latest"
    )
    assert api["deploy"] == {
        "endpoint_mode": "dnsrr",
        "replicas": 3,
        "resources": {"limits": {"memory": "512m"}},
    }
    assert services["web_blue"]["deploy"]["replicas"] == 1  # the contract asks for no more
    assert not {"build", "restart", "depends_on", "pids_limit", "mem_limit", "tmpfs"} & set(api)
    assert {"type": "tmpfs", "target": "/tmp"} in api[
        "volumes"
    ]  # Swarm ignores a service's tmpfs key
    # their volumes, and the edge's published ports, are on the manager
    for pinned in (
        "db",
        "cache",
        "edge",
    ):
        assert services[pinned]["deploy"]["placement"] == {"constraints": ["node.role == manager"]}
    assert services["edge"]["ports"] == [
        {"target": 8080, "published": 80, "protocol": "tcp", "mode": "host"},
        {"target": 8443, "published": 443, "protocol": "tcp", "mode": "host"},
    ]
    assert services["edge"]["healthcheck"]["interval"] == "10s"
    encrypted = {
        "driver": "overlay",
        "attachable": True,
        "driver_opts": {"encrypted": ""},
    }  # IPsec between the nodes
    assert out["networks"]["back"] == {"internal": True, **encrypted}
    assert out["networks"]["colorgate"] == encrypted and out["version"] == "3.8"
    clear = swarmfile.render(app, env, replicas={"api": 3}, encrypted=False)[
        "networks"
    ]  # COLORGATE_SWARM_ENCRYPT=no
    assert clear["colorgate"] == {"driver": "overlay", "attachable": True}


def test_on_a_swarm_the_apps_secrets_are_swarm_secrets_at_the_same_paths():
    app = contract.parse(
        app_with(
            **{
                "x-colorgate__secrets": {
                    "stripe_key": {"services": ["api"], "env": "STRIPE_KEY_FILE"}
                }
            }
        )
    )
    made = {
        "secrets-blue-api": {"stripe_key": "shop_secrets-blue-api_stripe_key_3f9a"}
    }  # swarm.ensure_secrets' names
    out = swarmfile.render(
        app,
        {"COLORGATE_BIND": "0.0.0.0", "COLORGATE_HTTPS_PORT": "443", "COLORGATE_HTTP_PORT": "80"},
        secrets=made,
    )
    api = out["services"]["api_blue"]
    assert {
        "source": "shop_secrets-blue-api_stripe_key_3f9a",
        "target": "/run/app-secrets/stripe_key",
        "mode": 0o444,
    } in api["secrets"]
    # no volume: a volume is one node's
    assert not any(str(v).startswith("secrets-blue-api") for v in api["volumes"])
    assert (
        api["environment"]["STRIPE_KEY_FILE"] == "/run/app-secrets/stripe_key"
        and "secrets-blue-api" not in out["volumes"]
    )
    assert out["secrets"] == {"shop_secrets-blue-api_stripe_key_3f9a": {"external": True}}


def test_a_colored_service_may_ask_for_more_tasks_on_a_swarm():
    app = contract.parse(
        app_with(**{"x-colorgate__colored": {"web": {"replicas": 3}, "api": None, "worker": {}}})
    )
    assert app.colored == ("web", "api", "worker") and app.replicas == {"web": 3}
    assert (
        swarmfile.render(app, {"COLORGATE_BIND": "0.0.0.0"})["services"]["web_green"]["deploy"][
            "replicas"
        ]
        == 3
    )
    with pytest.raises(
        ContractError,
        match=r"^x-colorgate.colored.web.replicas: should be a whole number from 1 to 100$",
    ):
        contract.parse(
            app_with(**{"x-colorgate__colored": {"web": {"replicas": 0}, "api": {}, "worker": {}}})
        )
    with pytest.raises(
        ContractError,
        match=r"^x-colorgate.colored.web: unknown key 'replica': did you mean 'replicas'\?$",
    ):
        contract.parse(
            app_with(**{"x-colorgate__colored": {"web": {"replica": 2}, "api": {}, "worker": {}}})
        )


def test_the_apps_own_secrets_are_files_of_the_copies_that_need_them_and_never_their_environment():
    data = app_with(
        **{
            "x-colorgate__secrets": {
                "stripe_key": {"services": ["api"], "env": "STRIPE_KEY_FILE"},
                "signing_key": ["api", "worker"],
            }
        }
    )
    app = contract.parse(data)
    assert app.secrets == (
        contract.Secret("stripe_key", ("api",), "STRIPE_KEY_FILE"),
        contract.Secret("signing_key", ("api", "worker")),
    )
    rendered = render.compose(app)
    api, worker, web = (rendered["services"][f"{n}_green"] for n in ("api", "worker", "web"))
    assert (
        "secrets-green-api:/run/app-secrets:ro" in api["volumes"]
        and api["environment"]["STRIPE_KEY_FILE"] == "/run/app-secrets/stripe_key"
    )
    assert (
        "secrets-green-worker:/run/app-secrets:ro" in worker["volumes"]
        and "STRIPE_KEY_FILE" not in worker["environment"]
    )
    assert not any("app-secrets" in str(v) for v in web.get("volumes") or [])
    assert {
        "secrets-blue-api",
        "secrets-green-api",
        "secrets-blue-worker",
        "secrets-green-worker",
    } <= set(rendered["volumes"])
    for bad, message in (
        (
            {"Stripe": ["api"]},
            r"^x-colorgate.secrets.Stripe: a secret's name is lowercase letters, digits and '_'",
        ),
        (
            {"key": ["db"]},
            r"^x-colorgate.secrets.key.services: 'db' is not colored: secrets reach colored services",
        ),
        (
            {"key": {"services": ["api"], "file": "X"}},
            r"^x-colorgate.secrets.key: unknown key 'file': use services, env$",
        ),
        ({"key": []}, r"^x-colorgate.secrets.key.services: name the colored services that get it$"),
        (
            {"key": {"services": ["api"], "env": "not ok"}},
            r"^x-colorgate.secrets.key.env: should be an environment variable name",
        ),
    ):
        with pytest.raises(ContractError, match=message):
            contract.parse(app_with(**{"x-colorgate__secrets": bad}))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["services"].__setitem__(1, {"image": "x"}),
            "services.1: a service's name is text: quote it ('1':)",
        ),
        (
            lambda d: d["services"].__setitem__("web", ["a"]),
            "services.web: should be a mapping of the service's keys (image:, build:, ...), not a list",
        ),
        (
            lambda d: d["services"]["api"].__setitem__("environment", 5),
            "services.api.environment: should be a mapping or a list, not 5",
        ),
        (
            lambda d: d["services"]["api"].__setitem__("environment", ["A=1", 2]),
            "services.api.environment: each item of the list should be text (KEY=value, a name), not 2",
        ),
        (
            lambda d: d["services"]["api"].__setitem__("labels", 7),
            "services.api.labels: should be a mapping or a list, not 7",
        ),
        (
            lambda d: d.__setitem__("volumes", ["a"]),
            "volumes: should be a mapping of names (`volumes:` then `  name: {}` lines), not a list",
        ),
        (
            lambda d: d.__setitem__("networks", ["data"]),
            "networks: should be a mapping of names (`networks:` then `  name: {}` lines), not a list",
        ),
        (
            lambda d: d.__setitem__("services", ["web"]),
            "services: should be a mapping of the app's services (`services:` then `  web: {image: ...}`)",
        ),
        (
            lambda d: d["services"]["api"].__setitem__("depends_on", 7),
            "services.api.depends_on: should be a list or a mapping, not 7",
        ),
        (
            lambda d: d["services"]["db"].__setitem__("volumes", "data:/x"),
            "services.db.volumes: should be a list, not 'data:/x'",
        ),
        (
            lambda d: d["services"]["db"].__setitem__("healthcheck", ["CMD"]),
            "services.db.healthcheck: should be a mapping, not ['CMD']",
        ),
        (
            lambda d: d["services"]["db"].__setitem__("image", 16),
            "services.db.image: should be text, not 16",
        ),
        (
            lambda d: d["services"]["db"].__setitem__("read_only", "yes"),
            "services.db.read_only: should be true or false, not 'yes'",
        ),
    ],
)
def test_a_compose_file_of_the_wrong_shape_is_one_line_naming_the_key(mutate, message):
    """Shapes Compose's specification forbids, which would otherwise reach the rendering."""
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ContractError) as caught:
        contract.parse(data)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "port, published",
    [
        (
            "0.0.0.0:443:8443",
            [{"target": 8443, "published": 443, "protocol": "tcp", "mode": "host"}],
        ),
        (
            "10.0.0.5:5432:5432/tcp",
            [{"target": 5432, "published": 5432, "protocol": "tcp", "mode": "host"}],
        ),
        ("[::]:53:53/udp", [{"target": 53, "published": 53, "protocol": "udp", "mode": "host"}]),
        (
            "7000-7001:8000-8001",
            [
                {"target": 8000, "published": 7000, "protocol": "tcp", "mode": "host"},
                {"target": 8001, "published": 7001, "protocol": "tcp", "mode": "host"},
            ],
        ),
        (
            {"target": 6379, "published": "6380", "protocol": "tcp"},
            [{"target": 6379, "published": 6380, "protocol": "tcp", "mode": "host"}],
        ),
        (6379, [{"target": 6379, "protocol": "tcp", "mode": "host"}]),
    ],
)
def test_on_a_swarm_every_port_form_compose_allows_is_published_on_the_node(port, published):
    assert swarmfile.host_ports([port], "services.edge.ports") == published


@pytest.mark.parametrize(
    "port, message",
    [
        (
            "127.0.0.1:8443:8443",
            "services.edge.ports[0]: '127.0.0.1:8443:8443' is bound to loopback, which a Swarm cannot do (it publishes on every "
            "address of the node): for the edge set COLORGATE_BIND to the node's address or 0.0.0.0",
        ),
        ({"target": 6379, "published": 6379, "host_ip": "::1"}, "is bound to loopback"),
        ("[::1]:1:1", "is bound to loopback"),
        (
            "7000-7002:8000-8001",
            "services.edge.ports[0]: '7000-7002:8000-8001' maps 3 ports to 2: give ranges of one length",
        ),
        (
            "redis:6379",
            "services.edge.ports[0]: 'redis:6379' is not a port, a range or PUBLISHED:TARGET",
        ),
    ],
)
def test_on_a_swarm_a_port_it_cannot_publish_as_written_is_refused_in_one_line(port, message):
    """A loopback port is meant to stay private; Swarm would publish it on every address."""
    with pytest.raises(ContractError) as caught:
        swarmfile.host_ports([port], "services.edge.ports")
    assert message in str(caught.value)
    # the edge as the development profile binds it
    with pytest.raises(ContractError, match="COLORGATE_BIND"):
        swarmfile.render(contract.parse(BASE), {"COLORGATE_BIND": "127.0.0.1"})
