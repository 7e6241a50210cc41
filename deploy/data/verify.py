"""A backup verified by a real restore: restored into a scratch PostgreSQL of the tools'
major, its schema fingerprinted and its rows counted, and the verdict recorded beside it
(a restore or a move needs a verified backup)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import tenacity

from deploy.config import Settings
from deploy.data import content, dbtools
from deploy.data.db import checksum, find, write_json
from deploy.errors import CommandError
from deploy.target import runner


@dataclass
class Verified:
    name: str
    usable: bool
    reason: str
    rows: list[tuple[str, str, str, bool]]


def verify(settings: Settings, name: str | None = None) -> Verified:
    """Restore a backup into a throwaway PostgreSQL and compare it with its manifest.
    The result is recorded beside the backup; one that fails is marked unusable."""
    found = find(settings, name)
    manifest = found["manifest"]
    name = manifest["name"]
    result = Verified(name, False, "", [])
    if checksum(settings, name) != manifest["sha256"]:
        result.reason = (
            "the dump's checksum does not match its manifest (changed or damaged since the backup)"
        )
    else:
        _restore_and_compare(settings, manifest, result)
    record_verify(settings, name, result.usable, result.reason)
    return result


def _restore_and_compare(settings: Settings, manifest: dict, result: Verified) -> None:
    """The dump restored into a throwaway server of the tools that made it, on no network,
    its row counts and migrations compared with the manifest's; the server removed after,
    even when docker created it but could not start it."""
    name = manifest["name"]
    container = f"{settings.project}-verify-{secrets.token_hex(3)}"
    major = dbtools.archive_major(settings, manifest)
    try:
        runner.run(
            ["docker", "run", "--detach", "--name", container, "--network", "none"]
            + ["--label", f"com.colorgate.verify={settings.project}"]
            + ["-e", f"POSTGRES_USER={settings.postgres_user}"]
            + ["-e", f"POSTGRES_DB={settings.postgres_db}", "-e", "POSTGRES_PASSWORD"]
            + [
                "-v",
                f"{settings.project}_backups:/backups:ro",
                dbtools.tools_image(settings, major),
            ],
            env={**settings.docker_env(), "POSTGRES_PASSWORD": secrets.token_urlsafe(16)},
            what="starting a throwaway PostgreSQL",
        )
        _wait_pg(settings, container)
        restored = runner.run(
            ["docker", "exec", container, "pg_restore", "--no-owner", "--no-privileges"]
            + ["--exit-on-error", "-U", settings.postgres_user, "-d", settings.postgres_db]
            + [f"/backups/{name}.dump"],
            env=settings.docker_env(),
            check=False,
            what="pg_restore",
        )
        if restored.returncode != 0:
            last = (restored.stderr.strip().splitlines() or ["no output"])[-1]
            result.reason = f"pg_restore failed: {runner.redact(last)}"
            return
        result.rows = content.compare(
            content.Facts(manifest["counts"], manifest["migrations"]),
            dbtools.facts(settings, container),
        )
        bad = [r[0] for r in result.rows if not r[3]]
        result.usable = not bad
        result.reason = (
            f"restored into PostgreSQL {major}; every row count and the migrations match"
            if not bad
            else f"mismatch: {', '.join(bad)}"
        )
    finally:
        runner.run(
            ["docker", "rm", "--force", "--volumes", container],
            env=settings.docker_env(),
            check=False,
        )


def record_verify(settings: Settings, name: str, usable: bool, reason: str) -> None:
    record = {
        "usable": usable,
        "reason": reason,
        "verified": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(settings, f"{name}.verify.json", record, "recording the verify result")


def _wait_pg(settings: Settings, container: str) -> None:
    @tenacity.retry(
        stop=tenacity.stop_after_delay(60),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2),
        retry=tenacity.retry_if_exception_type(CommandError),
        reraise=True,
    )
    def ready() -> None:
        runner.run(
            [
                "docker",
                "exec",
                container,
                "psql",
                "-X",
                "-q",
                "-U",
                settings.postgres_user,
                "-d",
                settings.postgres_db,
                "-c",
                "SELECT 1",
            ],
            env=settings.docker_env(),
            what="waiting for the throwaway PostgreSQL",
        )

    ready()


SCHEMA_SQL = """SELECT md5(coalesce(string_agg(table_schema || '.' || table_name || '.' || column_name || ':' || data_type, ','
  ORDER BY table_schema, table_name, column_name), '')) FROM information_schema.columns
  WHERE table_schema NOT IN ('pg_catalog', 'information_schema');"""


def schema_fingerprint(settings: Settings) -> str:
    """A digest of the database's tables and columns: what a migration changes."""
    return dbtools.psql(settings, SCHEMA_SQL, what="reading the database's schema").stdout.split()[
        -1
    ]
