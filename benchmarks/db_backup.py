#!/usr/bin/env python3
"""Backup and verify times for a database of about a million rows.

Starts its own isolated stack, seeds `--rows` notes (one INSERT ... generate_series,
inside PostgreSQL), then times `db.backup` and `db.verify` and reports the dump size.
The seed step alone gives the baseline the other figures are compared to (time to
write the same rows). Prints the figures, writes JSON (--json), removes its stack.

    python benchmarks/db_backup.py --rows 1000000 --json benchmarks/out/db_backup.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import config, profiles, stack, starting  # noqa: E402
from deploy.data import db, verify
from deploy.target import dbfacts, runner

SEED_SQL = "INSERT INTO notes (body) SELECT 'seeded note ' || g || ' ' || md5(g::text) FROM generate_series(1, {rows}) g;"


def seed_cmd(settings: config.Settings) -> list[str]:
    return dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="leave the stack running")
    args = p.parse_args(argv)
    run_id = f"cgdbbench{os.getpid()}{secrets.token_hex(2)}"
    from benchmarks.switch_under_load import free_port

    settings = profiles.load(
        "development",
        environ={
            **os.environ,
            "COLORGATE_PROJECT": run_id,
            "COLORGATE_IMAGE_PREFIX": f"{run_id}/",
            "COLORGATE_HTTP_PORT": str(free_port()),
            "COLORGATE_HTTPS_PORT": str(free_port()),
        },
    )
    try:
        starting.start_stack(settings)
        t = time.monotonic()
        runner.run(
            seed_cmd(settings),
            input=SEED_SQL.format(rows=int(args.rows)),
            env=settings.docker_env(),
            what="seeding",
        )
        seed_s = time.monotonic() - t
        t = time.monotonic()
        manifest = db.backup(settings)
        backup_s = time.monotonic() - t
        t = time.monotonic()
        verified = verify.verify(settings, manifest["name"])
        verify_s = time.monotonic() - t
    finally:
        if not args.keep:
            stack.destroy(settings)
    result = {
        "rows": manifest["counts"].get("public.notes"),
        "seed_s": round(seed_s, 2),
        "backup_s": round(backup_s, 2),
        "verify_s": round(verify_s, 2),
        "dump_bytes": manifest["size"],
        "verified": verified.usable,
        "backup_vs_seed": round(backup_s / seed_s, 2),
        "verify_vs_seed": round(verify_s / seed_s, 2),
    }
    print(
        f"{result['rows']} rows: seed {result['seed_s']} s; backup {result['backup_s']} s ({result['backup_vs_seed']}x seed); "
        f"verify {result['verify_s']} s ({result['verify_vs_seed']}x seed); dump {result['dump_bytes'] / 1e6:.1f} MB; "
        f"verified: {result['verified']}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
