"""db.move: cut the app over from the stack's own PostgreSQL to a managed one.

Both modes end with the normal gated release of the next color, pointed at the new
database, and both freeze writes at the edge for the last stretch: a write that
arrives then is held (COLORGATE_HOLD_SECONDS) and passed on to the new color when the
freeze ends, or answered 503 with Retry-After at the bound; reads go on.

    checks (before anything changes), build the next color's images
    dump:      start the next color's containers on the (empty) target -> pause the old
               color's workers -> freeze -> drain -> the local database refuses writes
               -> backup (one snapshot) -> restore into the target -> verify (target =
               dump = local, row counts, then content) -> its migrations -> wait until it
               is healthy -> pre gates -> the local content unchanged -> switch -> post
               gates -> record -> unfreeze
    replicate: copy the schema -> publish (one-off role, TLS relay) -> subscribe
               -> initial copy -> start the next color on the target -> pre gates
               -> pause the old color's workers -> freeze -> drain -> the local database
               refuses writes -> catch up until every row count, then every table's
               content, is equal -> copy sequence values -> drop the subscription,
               publication and role -> switch -> post gates -> record -> unfreeze
               -> remove the relay -> back up the local database
    both:      stop the old color (its reads drained)

The replicate freeze covers only what must not see a write: everything that can run
before it (the candidate's start and pre gates, the cut-over container's start) does.
The local database's data is only read; it refuses writes from the freeze on (from then
on it is not the app's) and stays until `invoke db.retire-local`. A failure
before the switch (or post gates that fail after it, still inside the freeze) leaves
traffic on the old color with the local database, its workers running again, writes
open again (in the database first). The replication itself (subscription, cut-over script) is replication.py's, its relay relay.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from deploy import db, dbtools, edge, facts, relay, release, replication, runner, stack
from deploy.config import Settings
from deploy.keys import database_url, shown_url
from deploy.errors import ColorgateError, ConfigError, GateFailed, MoveError
from deploy.history import Record, at, lock, now, recorded, timed

MODES = ("dump", "replicate")

CHECK_SQL = """SELECT 'version|' || current_setting('server_version_num');
SELECT 'tables|' || count(*) || '|' || coalesce(min(schemaname || '.' || tablename), '')
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema');
SELECT 'subscribe|' || (rolsuper OR EXISTS (SELECT FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'member')
  AND r.rolname IN ('pg_create_subscription', 'rds_superuser', 'cloudsqlsuperuser', 'azure_pg_admin')))
  FROM pg_roles WHERE rolname = current_user;
SELECT 'noidentity|' || count(*) || '|' || coalesce(min(n.nspname || '.' || c.relname), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
    AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)));
"""

# Until no client of the local database is inside a statement or transaction (a
# worker's, or a write that did not come through the edge), at most 10 s.
DRAIN_SCRIPT = """i=0
while [ $i -lt 100 ]; do
  n=$(psql -X -A -t -v ON_ERROR_STOP=1 -c "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
        AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'")
  [ "$n" = 0 ] && exit 0
  i=$((i + 1)); sleep 0.1
done
echo "$n sessions still busy" >&2; exit 1
"""

# --- pure helpers --------------------------------------------------------------------


def check_url(url: str) -> str:
    try:
        return database_url(url.strip())
    except ValueError as exc:
        raise ConfigError(f"the target URL {exc}") from None


def explain_connect_error(stderr: str, shown: str) -> str:
    """psql's complaint about a connection -> one line naming the cause and the fix."""
    text = stderr.strip()
    last = (text.splitlines() or ["no output"])[-1]
    if "could not translate host name" in text:
        return f"cannot reach the target database {shown}: its host name does not resolve; check the URL"
    if any(s in text for s in ("Connection refused", "timeout expired", "No route to host", "Network is unreachable",
                               "Connection timed out", "could not connect to server")):
        return f"cannot reach the target database {shown}: nothing answers there ({last.strip()}); check the host, port and firewall"
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return f"the target database {shown} refused the credentials: check the user and password in the URL"
    if "no pg_hba.conf entry" in text:
        return f"the target database {shown} does not accept connections from this host: allow it in the managed service's access rules"
    if "database" in text and "does not exist" in text:
        return f"the database named in {shown} does not exist on the target: create it (empty) first"
    if "certificate verify failed" in text:
        return (f"the target database {shown} has a certificate that is not signed by the CA in the URL's sslrootcert "
                "(or the system's, without one): give its provider's CA file as sslrootcert=PATH in the URL")
    if "does not match host name" in text:
        return (f"the target database {shown} has a certificate that does not name the URL's host ({last.strip()}): "
                "use the host name the certificate names")
    if "SSL" in text:
        return f"TLS to the target database {shown} failed ({last.strip()}): check sslmode and sslrootcert in the URL"
    return f"cannot use the target database {shown}: {last.strip()}"


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    version: int  # server_version_num, e.g. 150004
    tables: int
    first_table: str
    can_subscribe: bool  # superuser, or a role that may create subscriptions (PG16+, managed services' admin roles)
    without_identity: tuple[int, str] = (0, "")  # tables with no replica identity (no primary key): how many, the first

    @property
    def major(self) -> int:
        return self.version // 10000  # 150004 -> 15; 90624 (9.6) -> 9


def parse_check(out: str) -> ServerFacts:
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition("|")
        fields[key] = value
    count, _, first = fields.get("tables", "0|").partition("|")
    bare, _, first_bare = fields.get("noidentity", "0|").partition("|")
    return ServerFacts(int(fields["version"]), int(count), first, fields.get("subscribe") in ("t", "true"), (int(bare or 0), first_bare))


def check_compatible(source: ServerFacts, target: ServerFacts, shown: str, mode: str) -> None:
    """Refuse a target that is older than the source, not empty, or (replicate) cannot subscribe."""
    if target.major < source.major:
        raise MoveError(f"the target database {shown} runs PostgreSQL {target.major}, older than the local {source.major}: "
                        f"a dump or replication may not apply there; use PostgreSQL {source.major} or newer")
    if target.tables:
        raise MoveError(f"the target database {shown} is not empty ({target.tables} table(s), e.g. {target.first_table}): "
                        "db.move only fills an empty database; point it at a new one")
    if mode == "replicate" and not target.can_subscribe:
        raise MoveError(f"the user in {shown} may not create a subscription: "
                        "use the managed service's admin user, or --mode dump")
    count, first = source.without_identity
    if mode == "replicate" and count:
        raise MoveError(f"{count} local table(s) have no replica identity (no primary key), e.g. {first}: while replication "
                        f"copies them the app's UPDATE and DELETE there would fail; add a primary key, or `ALTER TABLE {first} "
                        "REPLICA IDENTITY FULL`, or move with --mode dump")


# --- steps ---------------------------------------------------------------------------


def preflight(settings: Settings, url: str, mode: str) -> ServerFacts:
    """Everything that can be checked before anything changes."""
    shown = shown_url(url)
    target = dbtools.psql(settings, CHECK_SQL, url, check=False)
    if target.returncode != 0:
        raise MoveError(explain_connect_error(runner.redact(target.stderr), shown))
    source = parse_check(dbtools.psql(settings, CHECK_SQL, what="checking the local database").stdout)
    found = parse_check(target.stdout)
    check_compatible(source, found, shown, mode)
    runner.say(f"   target {shown}: PostgreSQL {found.major}, empty, credentials accepted (local: PostgreSQL {source.major})")
    if mode == "replicate":
        relay.check_tls(settings, found.major)
        relay.check(settings)
    return found


def _facts_of(settings: Settings, url: str = "") -> dbtools.Facts:
    out = dbtools.psql(settings, dbtools.FACTS_SQL, url, what="reading row counts").stdout
    return dbtools.parse_facts([line for line in out.splitlines() if line and line != dbtools.END])


def _compare_or_fail(expected: dbtools.Facts, got: dbtools.Facts, where: str) -> None:
    rows = dbtools.compare(expected, got)
    bad = [r[0] for r in rows if not r[3]]
    if bad:
        runner.say(dbtools.format_compare(rows))
        raise MoveError(f"{where} does not match the local database ({', '.join(bad)})")


@contextlib.contextmanager
def _frozen(settings: Settings, record: Record, plan: release.Plan) -> Iterator[None]:
    """Writes frozen at the edge, and (once drained: _drain) refused in the local
    database; a failure that leaves traffic there takes writes there again first. After
    a move the local database keeps refusing them: nothing may write to it any more."""
    started, held = time.monotonic(), False
    with runner.step("freezing writes at the edge (reads go on)"):
        edge.set_frozen(settings, True)
    try:
        yield
    except BaseException:
        try:
            live = edge.read_active(settings)
            if live is None or live.color != plan.to_color:
                dbtools.freeze_database(settings, False)
        except ColorgateError as again:  # writes stay held at the edge: the next command (or db.unfreeze) opens both
            held = True
            runner.say(f"!! the local database still refuses writes ({again}), so the edge keeps holding them")
        raise
    finally:
        try:
            if held:
                raise MoveError("the local database could not take writes again")
            edge.set_frozen(settings, False)
        except ColorgateError as exc:
            raise MoveError(f"writes are still frozen at the edge ({exc}): end the freeze with `invoke db.unfreeze`") from None
        record.timings["write_freeze"] = round(time.monotonic() - started, 3)
        runner.say(f"ok writes open again: the write freeze lasted {record.timings['write_freeze']:.1f}s")


def _drain(settings: Settings, script: bool = True) -> None:
    """Under a freeze: until every write the edge let through before it has been
    answered, and (`script`) no client of the local database is inside a statement;
    then the local database refuses every write (a GET handler's, a worker's)."""
    left = edge.drain_writes(settings)
    if left:
        raise MoveError(f"{left} write(s) let through before the freeze are still unanswered after 10 s")
    if script:
        dbtools.tools(settings, DRAIN_SCRIPT, what="waiting for in-flight writes")
    dbtools.freeze_database(settings, True)


def _same_content(expected: dict[str, str], got: dict[str, str], problem: str) -> None:
    differ = sorted(t for t in set(expected) | set(got) if expected.get(t) != got.get(t))
    if differ:
        raise MoveError(f"{problem}, row by row, in {', '.join(differ)}")


def _cut_over(settings: Settings, record: Record, url: str, mode: str, plan: release.Plan) -> None:
    candidate, version = plan.to_color, plan.to_version
    versions = {**facts.running_versions(facts.service_states(settings)), candidate: version, plan.from_color: plan.from_version}
    databases = {candidate: url}
    # no worker runs from just before the freeze until traffic has moved: one of the old color
    # would take jobs (from a shared queue) and write them to the old database, one of the
    # candidate to the replica (or the empty target); jobs wait in their queue meanwhile
    workers, held = settings.app.worker_services(plan.from_color), settings.app.worker_services(candidate)
    touched = False
    paused: dict[str, int] | None = None
    frozen_at = ""
    try:
        at(record, "images")
        with runner.step(f"{'pulling' if settings.registry else 'building'} {candidate} images ({version})"):
            stack.ensure_release_images(settings, candidate, versions, release=True)
        if mode == "replicate":
            touched = True
            at(record, "subscribe")
            replication.subscribe(settings, record, url, _new_password())
            at(record, "start")
            release.start_candidate(settings, plan, versions, databases, held=held)
            release.candidate_migrations(settings, record, candidate, versions, databases, migrate=False)
            # it runs on the replica already: gated before the freeze, which covers only the cut-over
            at(record, "pre_gates")
            release.gate(settings, record, plan, "pre")
        else:  # started on the empty target now, so that the freeze need not wait for its start
            at(record, "start")
            release.start_candidate(settings, plan, versions, databases, wait=False, held=held)
        if workers:
            at(record, "pause_workers")
            with runner.step(f"pausing {plan.from_color}'s workers ({', '.join(workers)}): their jobs wait for {candidate}"):
                paused = stack.stop_color(settings, plan.from_color, versions, drain=False, services=workers, databases=databases)
                paused = {name: paused.get(name, 0) for name in workers}  # (a Swarm's counts: they start with as many)
        frozen_at = now()  # from here on the local database takes no more writes
        if mode == "replicate":
            _replicate_frozen(settings, record, url, plan, versions, frozen_at)
        else:
            _dump_frozen(settings, record, url, plan, versions, databases, held, frozen_at)
    except (ColorgateError, KeyboardInterrupt) as exc:
        touched = touched or "restore" in record.timings  # dump: the restore began
        if mode == "replicate" and touched:
            replication.unsubscribe(settings, url, check=False)
        live = edge.read_active(settings)
        if live is not None and live.color == candidate and frozen_at:
            # interrupted after its gated switch (at its record): traffic and its writes are on the
            # target now, so the record says so before anything else (else the next command repairs it)
            _record_moved(settings, url, mode, plan, frozen_at)
        if live is None or live.color != candidate:
            stack.stop_color(settings, candidate, versions)
            if paused is not None:
                try:
                    stack.resume(settings, workers, versions, counts=paused, wait=False)
                except ColorgateError as again:
                    runner.say(f"!! {plan.from_color}'s workers did not start again ({again}): the next command starts them")
        if touched and isinstance(exc, ColorgateError):
            kind = type(exc) if isinstance(exc, GateFailed) else MoveError
            raise kind(f"{exc}; traffic stays on {plan.from_color} with the local database, untouched; "
                       f"the target {shown_url(url)} now holds a partial copy: empty it before retrying") from None
        raise
    # writes go to the new database now; the old color (reads drained) and the relay are left over
    at(record, "finish")
    if mode == "replicate":
        relay.remove(settings)
    if held:
        with runner.step(f"starting {candidate}'s workers ({', '.join(held)})"):
            counts = {name: (paused or {}).get(settings.app.copy_name(settings.app.split_copy(name)[0], plan.from_color), 0)
                      for name in held}
            stack.resume(settings, held, versions, databases, counts)
    with runner.step(f"stopping {plan.from_color} ({plan.from_version}): it uses the old database"):
        stack.stop_color(settings, plan.from_color, versions, databases=databases)


def _record_moved(settings: Settings, url: str, mode: str, plan: release.Plan, frozen_at: str) -> None:
    edge.write_database_record(settings, {"url": shown_url(url), "moved": frozen_at, "mode": mode, "from": "local",
                                           "live_color": plan.to_color, "version": plan.to_version})


def _replicate_frozen(settings: Settings, record: Record, url: str, plan: release.Plan, versions: dict[str, str],
                      frozen_at: str) -> None:
    """The replicate freeze: drain, catch up, sequences, end replication (one dbtools
    container started before it), switch, post gates."""
    env, flags = dbtools.tools_env(settings, {**replication.target_env(url), "CG_FACTS_SQL": dbtools.FACTS_SQL,
                                                     "CG_CONTENT_SQL": dbtools.CONTENT_SQL})
    with dbtools.one_off(settings, env) as one, \
            runner.session(dbtools.tools_cmd(settings, "sh", "-c", replication.CUTOVER_SCRIPT, "dbtools", relay.ROLE, flags=flags, name=one), env=env) as cut:
        _expect(cut, "ready")
        with _frozen(settings, record, plan):
            at(record, "drain")
            with timed(record, "drain", "waiting for in-flight writes"):
                _drain(settings, script=False)
                cut.stdin.write("go\n")
                cut.stdin.flush()
                _expect(cut, "drained")
            at(record, "catch_up")
            with timed(record, "catch_up", "waiting for the target to catch up (every row the same)"):
                _expect(cut, "caught-up")
            with timed(record, "unsubscribe", "copying sequence values, ending replication"):
                _expect(cut, "finished")
            release.switch_and_verify(settings, record, plan, versions, pre_gates=False)
            at(record, "record")
            _record_moved(settings, url, "replicate", plan, frozen_at)


def _expect(proc, word: str) -> None:
    """Read the cut-over script's output until it announces `word`; fail with its last
    complaint when it ended first."""
    for line in proc.stdout:
        if line.strip() == word:
            return
    proc.wait(timeout=30)
    last = (runner.redact(proc.stderr.read()).strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    raise MoveError(f"the replication cut-over stopped before '{word}': {last}")


def _dump_frozen(settings: Settings, record: Record, url: str, plan: release.Plan, versions: dict[str, str],
                 databases: dict[str, str], held: list[str], frozen_at: str) -> None:
    """The dump freeze: drain, dump, restore, verify, migrations, ready, gated switch."""
    candidate = plan.to_color
    with _frozen(settings, record, plan):
        at(record, "drain")
        with timed(record, "drain", "waiting for in-flight writes"):
            _drain(settings)
        at(record, "dump")
        with timed(record, "dump", "dumping the local database"):
            manifest = db.backup(settings)
        at(record, "restore")
        with timed(record, "restore", f"restoring {manifest['name']} into the target"):
            target_env = dbtools.url_env(url)
            dbtools.tools(settings, dbtools.RESTORE_SCRIPT, f"/backups/{manifest['name']}.dump", target_env["PGDATABASE"],
                          "--no-owner", "--no-privileges", extra=target_env, what="pg_restore", major=dbtools.archive_major(settings, manifest))
        with timed(record, "verify", "verifying the target against the dump and the local database"):
            expected = dbtools.Facts(manifest["counts"], manifest["migrations"])
            _compare_or_fail(expected, _facts_of(settings, url), "the restored target")
            _compare_or_fail(expected, _facts_of(settings), "a write slipped past the freeze: the dump")
            local, copy = facts.parallel(lambda source: dbtools.content(settings, source), ["", url])
            _same_content(local, copy, "the restored target differs from the local database")
            db.record_verify(settings, manifest["name"], True, f"restored into {shown_url(url)} by db.move; every row the same")
        record.detail = f"backup {manifest['name']}"
        # the release's own migrations, if any, now run on the target (the dump is their backup)
        release.candidate_migrations(settings, record, candidate, versions, databases, verified_backup=False)
        # ready only now: an app's health check may need its tables, which the target lacked until the restore
        with timed(record, "ready", f"waiting for {candidate} on the restored database"):
            release.wait_candidate(settings, plan, recovering=True,
                                   services=[s for s in settings.app.color_services(candidate) if s not in held])
        at(record, "pre_gates")
        release.gate(settings, record, plan, "pre")
        with timed(record, "compare", "checking that the local database is still what was restored"):
            _same_content(local, dbtools.content(settings), "a write reached the local database after the restore: it differs from the copy")
        release.switch_and_verify(settings, record, plan, versions, pre_gates=False)
        at(record, "record")
        _record_moved(settings, url, "dump", plan, frozen_at)


def _new_password() -> str:
    password = secrets.token_urlsafe(24)
    runner.add_secret(password)
    return password


def move(settings: Settings, url: str, mode: str = "dump", break_lock: bool = False) -> Record:
    """Move the app's database from the stack's PostgreSQL to the (empty) one at `url`."""
    dbtools.require_postgres(settings)
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}: use dump or replicate")
    url = check_url(url)
    runner.add_secret(unquote(urlsplit(url).password or ""))
    runner.add_secret(url)
    if settings.database_url:
        raise MoveError(f"the app already uses {shown_url(settings.database_url)} (DATABASE_URL): db.move moves the stack's own PostgreSQL only")
    isolated = settings.app.without_egress(settings.app.database_clients())
    if isolated:
        raise MoveError(f"{isolated[0]} uses the database but is on internal networks only, so it could not reach a managed one: "
                        f"give it a network that is not internal in {settings.app.file.name}")
    with lock(settings, "db.move", break_lock) as held:
        # the next version on the inactive color, as a deploy would; never a no-op
        target = release.observe(settings, held, tags=True, database=True, beside=True)
        plan = dataclasses.replace(release.plan_deploy(settings, target, force=True), action="db.move")
        with runner.step(f"checking the target database {shown_url(url)}"):
            preflight(settings, url, mode)
        record = Record(plan.action, plan.from_color, plan.to_color, plan.from_version, plan.to_version)
        with recorded(settings, record):
            _cut_over(settings, record, url, mode, plan)
            record.detail = f"{mode} to {shown_url(url)}, write freeze {record.timings['write_freeze']:.1f}s" + (
                f", {record.detail}" if record.detail else "")
    if mode == "replicate":
        local = dataclasses.replace(settings, database_url="")
        with runner.step("backing up the local database as it was at the move (for db.retire-local)"):
            manifest = db.backup(local)
            verified = db.verify(local, manifest["name"])
        runner.say(f"   backup {manifest['name']}: {'usable' if verified.usable else 'UNUSABLE: ' + verified.reason}")
    return record
