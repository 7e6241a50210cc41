"""`invoke init`: a drafted x-colorgate block for an existing compose file, written
into a copy; what it cannot infer is marked TODO; unreadable files are one line."""

from __future__ import annotations

import pytest

from deploy import contract, render, scaffold
from deploy.errors import ContractError

COMPOSE = """\
services:
  web:
    build: .
    ports: ["127.0.0.1:3000:3000/tcp"]
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:3000/healthz"]
    depends_on: [db]
  worker:
    build: .
    command: node worker.js
  db:
    image: docker.io/library/postgres:16-alpine
  redis:
    image: redis:7
"""


def test_the_draft_infers_routes_health_and_the_database(tmp_path):
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    out, draft = scaffold.init(tmp_path)
    assert out == tmp_path / "docker-compose.colorgate.yml"
    assert (tmp_path / "docker-compose.yml").read_text() == COMPOSE, "the original is left alone"
    assert (draft.colored, draft.shared, draft.routes) == (
        ["web", "worker"],
        ["db", "redis"],
        [("/", "web", 3000)],
    )
    assert draft.health == {"web": ("/healthz", "from its healthcheck")} and draft.database == (
        "db",
        "postgresql",
    )
    assert draft.todo == []  # its published port stays in the copy: left out of what runs, and said
    app = contract.load(out)
    assert "!! services.web.ports: left out: the edge routes to it" in render.wiring(app)
    assert app.routes[0] == contract.Route("/", "web", 3000) and app.database.clients == (
        "web",
        "worker",
    )


# Miniflux's compose file as its documentation gives it (docs: installation, Docker Compose)
MINIFLUX = """\
services:
  miniflux:
    image: miniflux/miniflux:latest
    ports:
      - "80:8080"
    depends_on:
      db:
        condition: service_healthy
    environment:
      - DATABASE_URL=postgres://miniflux:secret@db/miniflux?sslmode=disable
      - RUN_MIGRATIONS=1
      - CREATE_ADMIN=1
      - ADMIN_USERNAME=admin
      - ADMIN_PASSWORD=test123
  db:
    image: postgres:17-alpine
    environment:
      - POSTGRES_USER=miniflux
      - POSTGRES_PASSWORD=secret
      - POSTGRES_DB=miniflux
    volumes:
      - miniflux-db:/var/lib/postgresql/data
    healthcheck:
      test: ["CMD", "pg_isready", "-U", "miniflux"]
      interval: 10s
      start_period: 30s
volumes:
  miniflux-db:
"""


def test_a_database_url_the_app_reads_is_found_with_its_scheme_and_said_to_be_replaced(tmp_path):
    (tmp_path / "compose.yaml").write_text(MINIFLUX)
    out, draft = scaffold.init(tmp_path)
    assert (draft.url_vars, draft.scheme, draft.database) == (
        ["DATABASE_URL"],
        "postgres",
        ("db", "postgresql"),
    )
    assert "  database: {service: db, env: [DATABASE_URL], scheme: postgres}" in out.read_text()
    assert (
        "services.miniflux.environment.DATABASE_URL: its URL (and the password in it) is replaced by Colorgate's, "
        "as the app's own role; the database's POSTGRES_* come from the settings" in draft.todo
    )
    # render then says what it replaces, once the ports are gone
    out.write_text(out.read_text().replace('    ports:\n      - "80:8080"\n', ""))
    wired = render.wiring(contract.load(out))
    assert "DATABASE_URL in miniflux: the URL (postgres://...), in the environment" in wired
    assert (
        "!! services.miniflux.environment.DATABASE_URL: the value written there is replaced by Colorgate's"
        in wired
    )
    assert (
        "!! services.db.environment.POSTGRES_PASSWORD: the value written there is replaced by Colorgate's"
        in wired
    )


def test_what_cannot_be_inferred_is_marked(tmp_path):
    (tmp_path / "compose.yaml").write_text(
        "services:\n  api:\n    build: .\n  admin:\n    build: admin\n    ports: ['9000:80']\n"
        "  app:\n    build: app\n    ports: [{target: 8080, published: 80}]\n  cache:\n    image: mysql:8\n"
    )
    out, draft = scaffold.init(tmp_path / "compose.yaml", tmp_path / "draft.yaml")
    assert out == tmp_path / "draft.yaml"
    text = out.read_text()
    assert "TODO: a path that answers 200 only when the service is ready" in text
    assert "guessed path prefix" in text and "kind: other" in text and "db.* tasks" in text
    assert draft.routes == [("/", "admin", 80), ("/app/", "app", 8080)]


def test_init_refuses_clearly(tmp_path):
    with pytest.raises(ContractError, match="does not exist"):
        scaffold.init(tmp_path / "missing.yml")
    (tmp_path / "compose.yaml").write_text("services: [oops\n")
    with pytest.raises(ContractError, match="is not valid YAML"):
        scaffold.init(tmp_path)
    (tmp_path / "compose.yaml").write_text("x-colorgate: {}\nservices:\n  web: {build: .}\n")
    with pytest.raises(ContractError, match="already has an x-colorgate block"):
        scaffold.init(tmp_path)
    (tmp_path / "compose.yaml").write_text("services:\n  web: {build: .}\n")
    (tmp_path / "compose.colorgate.yaml").write_text("")
    with pytest.raises(ContractError, match="exists already: remove it or pass --output"):
        scaffold.init(tmp_path)


def test_init_writes_the_gates_module_once_and_the_draft_is_the_contract_read_from_then_on(
    tmp_path,
):
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    out, _ = scaffold.init(tmp_path)
    gates = tmp_path / "features" / "test_colorgate.py"
    assert "from colorgate_gates.test_gates import *" in gates.read_text()
    assert contract.compose_in(tmp_path) == out  # the drafted copy, before Compose's own names
    assert contract.compose_in(tmp_path, drafts=False) == tmp_path / "docker-compose.yml"
    gates.write_text("# the team's own\n")
    out.unlink()
    scaffold.init(tmp_path)
    assert gates.read_text() == "# the team's own\n"  # never overwritten
