"""Compose files as teams split them: the app's services in a file the main one
`include`s, a service that `extends` one of a base file, and an override file beside
it that Compose merges without being asked. Colorgate reads the app as Compose does
(`docker compose config`, variables left for the settings) and releases it."""

from __future__ import annotations

import os
import shutil

import pytest

from deploy import bases, config, profiles, render
from deploy.release import gates, releases
from deploy.target import facts, sockets

from .conftest import isolated_env, running_stack

ROOT = config.project_root()

FILES = {
    "compose.yaml": """\
include:
  - site.yaml
x-colorgate:
  colored: [site]
  routes:
    - {path: /, to: "site:8081", app_headers: [Content-Security-Policy]}
  health:
    site: {path: /status.txt, contains: ready}
""",
    "site.yaml": """\
services:
  site:
    extends: {file: base.yaml, service: web}
    environment: {SITE_NAME: included}
""",
    "base.yaml": """\
services:
  web:
    build:
      context: site
      args:
        BASE: ${COLORGATE_BASE_NGINX:-colorgate-base/nginx:missing}
    ports: ["8081:8081"]
""",
    "compose.override.yaml": """\
services:
  site:
    environment: {GREETING: from the override}
""",
}


@pytest.fixture(scope="module")
def split_app(request, tmp_path_factory):
    app = tmp_path_factory.mktemp("split") / "shop"
    shutil.copytree(ROOT / "examples" / "static-site" / "site", app / "site")
    for name, text in FILES.items():
        (app / name).write_text(text)
    settings = profiles.load(
        "development", environ={**os.environ, **isolated_env("cf"), "COLORGATE_APP": str(app)}
    )
    bases.build_bases(settings, bases.missing_bases(settings))
    with running_stack(request, settings):
        yield settings


def test_an_app_split_over_include_extends_and_an_override_file_is_released_as_compose_reads_it(
    split_app,
):
    s = split_app
    assert s.app.colored == ("site",) and s.app.services["site"]["build"]["context"] == str(
        s.app.directory / "site"
    )
    environment = dict(
        e.partition("=")[::2]
        for e in facts.inspect(s, facts.container(s, "site_blue"))["Config"]["Env"]
    )
    assert (environment["SITE_NAME"], environment["GREETING"], environment["COLORGATE_COLOR"]) == (
        "included",
        "from the override",
        "blue",
    )
    # from the base file
    assert "!! services.site.ports: left out: the edge routes to it" in render.wiring(s.app)
    assert {name for name, ports in sockets.published_ports(s).items() if ports} == {"edge"}
    result = gates.run_gates(s, "pre or post", "blue", "v1")
    assert result.passed, result.first_failure()
    record = releases.deploy(s)
    assert (record.outcome, record.to_color) == ("switched", "green"), record.detail
    green = dict(
        e.partition("=")[::2]
        for e in facts.inspect(s, facts.container(s, "site_green"))["Config"]["Env"]
    )
    assert green["GREETING"] == "from the override"


def test_a_file_compose_cannot_read_is_one_line_naming_it(tmp_path):
    from deploy import contract
    from deploy.errors import ContractError

    (tmp_path / "compose.yaml").write_text(
        FILES["compose.yaml"].replace("site.yaml", "missing.yaml")
    )
    with pytest.raises(
        ContractError, match=r"^docker compose cannot read .*compose\.yaml: .*missing\.yaml"
    ):
        contract.load(tmp_path)
