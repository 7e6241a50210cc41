"""Database safety: backups that are checked, pruned and restored (verified by a real
restore first: verify.py).

Backups are `pg_dump -Fc` files made by a one-off `dbtools` container on the stack's
internal network (never through a published port) and kept on the target in the
`backups` volume, each with a manifest: checksum, size, and the per-table row counts
and applied migrations *of the same snapshot the dump was taken from* (the snapshot is
exported by a psql session held open for the duration), so verify compares like with
like even while the app keeps writing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from deploy import edge
from deploy.config import Settings
from deploy.data import content, dbtools, offsite
from deploy.edge import locking
from deploy.errors import BadInput, ColorgateError, UnknownBackup
from deploy.keys import STRICT_PROFILES
from deploy.release import history, plans
from deploy.target import runner
from deploy.urls import shown_url

DUMP_SCRIPT = """set -eu
cd /backups
pg_dump --format=custom --snapshot="$2" --file="$1.dump.partial"
mv "$1.dump.partial" "$1.dump"
sha256sum "$1.dump" | cut -d' ' -f1
stat -c %s "$1.dump"
"""

LIST_SCRIPT = """cd /backups
for m in *.manifest.json; do
  [ -e "$m" ] || continue
  n=${m%.manifest.json}
  printf '{"manifest":'; cat "$m"
  printf ',"verify":'; if [ -f "$n.verify.json" ]; then cat "$n.verify.json"; else printf null; fi
  printf ',"copy":'; if [ -f "$n.copy.json" ]; then cat "$n.copy.json"; else printf null; fi
  printf ',"size":%s}\\n' "$(stat -c %s "$n.dump" 2>/dev/null || echo -1)"
done
"""


def backup_name(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time to the microsecond."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")


def _read_until_end(proc) -> list[str]:
    lines = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line == content.END:
            return lines
        if line:
            lines.append(line)
    raise ColorgateError(f"psql ended early: {runner.redact(proc.stderr.read().strip()[-300:])}")


def backup(
    settings: Settings,
    keep: int | None = None,
    protect: frozenset[str] = frozenset(),
    copy_required: bool = False,
) -> dict:
    """Dump the app's database with its facts from one snapshot; send it off the host
    when COLORGATE_BACKUP_COPY is set (a failed copy is said, or with `copy_required`
    raised, the backup kept); then, the backup made, prune (`keep` newest, and never
    those in `protect` nor the newest verified ones: see to_prune)."""
    name = backup_name()
    sha256, size, snapshot_facts = _dump(settings, name)
    manifest = {
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": sha256,
        "size": int(size),
        "database": settings.postgres_db,
        "source": shown_url(settings.database_url),
        # verify restores it into a server of its major
        "postgres": dbtools.server_version(settings),
        "counts": snapshot_facts.counts,
        "migrations": snapshot_facts.migrations,
    }
    write_json(settings, f"{name}.manifest.json", manifest, "writing the backup manifest")
    try:
        if settings.backup_copy:
            copied = offsite.send(settings, manifest)
            write_json(settings, f"{name}.copy.json", copied, "recording the off-host copy")
    except ColorgateError as exc:
        if copy_required:
            raise ColorgateError(
                f"backup {name} is made and kept on the target, but {exc}"
            ) from None
        runner.say(f"!! backup {name} is kept on the target only: {exc}")
    finally:
        prune(settings, keep or settings.backup_keep, protect=protect)
    return manifest


def _dump(settings: Settings, name: str) -> tuple[str, str, content.Facts]:
    """pg_dump of one exported snapshot, and the facts (row counts, migrations) read in
    that same snapshot: its checksum, its size and those facts."""
    major = dbtools.dump_major(settings)
    env, flags = dbtools.tools_env(settings)
    with (
        dbtools.one_off(settings, env) as one,
        runner.session(
            dbtools.tools_cmd(settings, *dbtools.PSQL, flags=flags, name=one), env=env
        ) as psql,
    ):
        psql.stdin.write(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n"
            f"SELECT '{content.END}';\n"
        )
        psql.stdin.flush()
        out = _read_until_end(psql)
        if not out:
            raise ColorgateError(
                "could not export a snapshot from PostgreSQL: is the stack up? (`invoke status`)"
            )
        psql.stdin.write(content.FACTS_SQL)
        psql.stdin.flush()
        snapshot_facts = content.parse_facts(_read_until_end(psql))
        dumped = dbtools.tools(settings, DUMP_SCRIPT, name, out[-1], what="pg_dump", major=major)
        psql.stdin.write("COMMIT;\n")
    sha256, size = dumped.stdout.split()[-2:]
    return sha256, size, snapshot_facts


def has_tables(settings: Settings) -> bool:
    """Whether the app's database holds any table (a new one holds nothing to back up)."""
    out = dbtools.psql(
        settings,
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema');",
        what="looking into the database",
    ).stdout.split()
    return bool(out) and out[-1] != "0"


def list_backups(settings: Settings) -> list[dict]:
    """Backups on the target, oldest first, with size and verify result."""
    out = dbtools.tools(settings, LIST_SCRIPT, what="listing backups").stdout
    found = []
    for line in out.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return sorted(found, key=lambda b: b["manifest"]["name"])


def to_prune(backups: list[dict], keep: int, protect: frozenset[str] = frozenset()) -> list[str]:
    """Which backups (oldest first) to delete: all but the newest `keep`, except those
    in `protect` (the one being restored) and the newest backup of each source (local,
    or a managed database) that a restore verified usable: retention never leaves a
    source without a backup known to work, whatever came after it. The newest is always
    kept (a `keep` below 1 is read as 1)."""
    names = [b["manifest"]["name"] for b in backups]
    kept = set(names[-max(keep, 1) :])
    newest_usable: dict[str, str] = {}
    for b in backups:
        if (b.get("verify") or {}).get("usable"):
            newest_usable[b["manifest"].get("source", "local")] = b["manifest"]["name"]
    kept |= set(newest_usable.values()) | set(protect)
    return [n for n in names if n not in kept]


# What killed backups leave: a dump still `.partial`, a `.new` manifest, a dump without a
# manifest. Only those untouched for 10 minutes (a backup in progress writes all the time).
SWEEP_SCRIPT = """cd /backups
find . -maxdepth 1 -type f \\( -name '*.partial' -o -name '*.new' \\) -mmin +10 -print -delete | sed 's|^./||'
for d in *.dump; do
  [ -e "$d" ] || continue
  n=${d%.dump}
  [ -f "$n.manifest.json" ] && continue
  [ -n "$(find "$d" -mmin +10)" ] || continue
  rm -f "$d" "$n.verify.json" && echo "$d"
done
"""


def prune(settings: Settings, keep: int, protect: frozenset[str] = frozenset()) -> list[str]:
    """Delete what to_prune says, and sweep what killed backups left (said)."""
    old = to_prune(list_backups(settings), keep, protect)
    script = (
        'cd /backups && for n in "$@"; do rm -f "$n.dump" "$n.manifest.json" "$n.verify.json" "$n.copy.json"; done\n'
        + SWEEP_SCRIPT
    )
    swept = dbtools.tools(settings, script, *old, what="removing old backups").stdout.split()
    if swept:
        runner.say(f"!! removed what killed backups left: {', '.join(swept)}")
    return old


def find(settings: Settings, name: str | None) -> dict:
    backups = list_backups(settings)
    if not backups and not (settings.backup_copy and name):
        raise UnknownBackup("there are no backups yet: make one with `invoke db.backup`")
    if name is None:
        return backups[-1]
    for b in backups:
        if b["manifest"]["name"] == name:
            return b
    if settings.backup_copy and name in offsite.remote_backups(settings):
        with runner.step(f"fetching backup {name} from {settings.backup_copy}"):
            offsite.copy(settings, "fetch", name)
        return find(settings, name)
    newest = f" (newest: {backups[-1]['manifest']['name']})" if backups else ""
    raise UnknownBackup(f"unknown backup {name!r}: `invoke db.backups` lists them{newest}")


def write_json(settings: Settings, filename: str, data: dict, what: str) -> None:
    """A JSON file beside the dumps, atomically: a run killed while writing leaves the old
    file (or none) and a `.new` that the next prune sweeps, never half a manifest."""
    dbtools.tools(
        settings,
        'cat > "/backups/$1.new" && mv "/backups/$1.new" "/backups/$1"',
        filename,
        input=json.dumps(data),
        what=what,
    )


def drop_backup(settings: Settings, name: str) -> None:
    dbtools.tools(
        settings,
        'cd /backups && rm -f "$1.dump" "$1.manifest.json"',
        name,
        what="dropping the backup",
    )


def check_keep(settings: Settings, keep: int | None, yes: bool) -> None:
    """Keeping fewer backups than the settings do deletes some they keep: on staging and
    production only with `yes`."""
    if (
        keep is not None
        and keep < settings.backup_keep
        and settings.profile in STRICT_PROFILES
        and not yes
    ):
        raise BadInput(
            f"--keep {keep} deletes {settings.profile} backups that COLORGATE_BACKUP_KEEP ({settings.backup_keep}) keeps: "
            "add --yes"
        )


def check_restore_allowed(settings: Settings, yes: bool) -> None:
    if settings.profile in STRICT_PROFILES and not yes:
        raise BadInput(
            f"restoring over the {settings.profile} database needs --yes (a fresh backup is taken first)"
        )


def restore(settings: Settings, name: str, yes: bool = False, unverified: bool = False) -> dict:
    """Restore `name` into the live database, in one transaction: only a backup a
    restore verified (unless `unverified`) whose checksum still matches; under the
    release lock, with writes frozen at the edge from before a fresh backup (retention
    never takes the one being restored) to the end (a write in between would be in
    neither; reads go on), and, in the stack's own database, refused there too (one that
    did not come through the edge). Recorded in the history. Returns the fresh backup's manifest."""
    check_restore_allowed(settings, yes)
    found = find(settings, name)
    checked = found.get("verify")
    if checked and not checked["usable"]:
        raise BadInput(f"backup {name} is marked unusable ({checked['reason']}): choose another")
    if not checked and not unverified:
        raise BadInput(
            f"backup {name} was never verified: run `invoke db.verify {name}` first, "
            "or restore it as it is with --unverified"
        )
    if checksum(settings, name) != found["manifest"]["sha256"]:
        raise ColorgateError(
            f"backup {name} changed or was damaged since it was made (its checksum does not match "
            "its manifest): choose another"
        )
    with locking.lock(settings, "db.restore"):
        live = edge.read_active(settings)
        color, version = (live.color, live.version) if live else ("", "")
        record = history.Record("db.restore", color, color, version, version)
        with locking.recorded(settings, record):
            do = Restore(settings, record, name, found["manifest"])
            plans.execute(RESTORE_STEPS, do, record, RESTORE_UNDO)
            record.outcome, record.detail = (
                "restored",
                f"restored {name}; as it was before: backup {do.fresh['name']}",
            )
    return do.fresh


# db.restore's order: writes frozen at the edge first (a write during the fresh backup
# would be in neither), and whatever happens, open again at the end
RESTORE_STEPS = ("freeze", "backup", "restore", "unfreeze")
RESTORE_UNDO = plans.Undo(
    steps={"freeze": "unfreeze"}, always=("freeze",), ends={"unfreeze": "freeze"}
)


class Restore:
    """db.restore's steps on the real target (RESTORE_STEPS orders them)."""

    def __init__(self, settings: Settings, record: history.Record, name: str, manifest: dict):
        self.settings, self.record, self.name, self.manifest = settings, record, name, manifest
        self.local = not settings.database_url
        self.fresh: dict = {}

    def freeze(self) -> None:
        edge.set_frozen(self.settings, True)

    def backup(self) -> None:
        with history.timed(
            self.record, "backup", "taking a fresh backup first (writes frozen at the edge)"
        ):
            left = edge.drain_writes(self.settings)
            if left:
                raise ColorgateError(
                    f"{left} write(s) still unanswered after 10 s: not restoring; try again"
                )
            if self.local:  # nor one that did not come through the edge (a GET handler's)
                dbtools.freeze_database(self.settings, True)
            self.fresh = backup(self.settings, protect=frozenset({self.name}))
        runner.say(f"   fresh backup: {self.fresh['name']}")

    def restore(self) -> None:
        settings = self.settings
        with history.timed(
            self.record, "restore", f"restoring {self.name} (writes frozen at the edge)"
        ):
            env, flags = dbtools.tools_env(
                settings, major=dbtools.archive_major(settings, self.manifest)
            )
            # interrupted: stopped before writes open again (one transaction: nothing done)
            with dbtools.one_off(settings, env) as one:
                # into the stack's own database as the app's role, so that the app owns what comes back
                as_app = [] if settings.database_url else [f"--role={settings.app_db_user}"]
                runner.run(
                    dbtools.tools_cmd(
                        settings,
                        "sh",
                        "-c",
                        dbtools.RESTORE_SCRIPT,
                        "restore",
                        f"/backups/{self.name}.dump",
                        env["PGDATABASE"] if settings.database_url else settings.postgres_db,
                        "--clean",
                        "--if-exists",
                        "--no-owner",
                        "--no-privileges",
                        *as_app,
                        flags=flags,
                        name=one,
                    ),
                    env=env,
                    what="pg_restore",
                )

    def unfreeze(self) -> None:
        """Writes open again: in the stack's own database first, then at the edge."""
        if self.local:
            dbtools.freeze_database(self.settings, False)
        edge.set_frozen(self.settings, False)


def checksum(settings: Settings, name: str) -> str:
    return dbtools.tools(
        settings, 'sha256sum "/backups/$1.dump" | cut -d" " -f1', name, check=False, what="checksum"
    ).stdout.strip()
