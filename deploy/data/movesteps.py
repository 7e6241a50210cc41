"""db.move's steps, each with its undo, in the order data.move plans them: the candidate
started on the new database, the freeze, the copy (dump and restore, or replication's
cut-over), the comparison, the switch, and the release of what it held."""

from __future__ import annotations

import contextlib
import secrets
import time

from deploy import edge, stack
from deploy.config import Settings
from deploy.data import content, db, dbtools, relay, replication, verify
from deploy.errors import ColorgateError, MoveError
from deploy.release import candidate, decide, releases
from deploy.release.history import Record, now, timed
from deploy.target import facts, runner
from deploy.urls import shown_url

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


def _facts_of(settings: Settings, url: str = "") -> content.Facts:
    out = dbtools.psql(settings, content.FACTS_SQL, url, what="reading row counts").stdout
    return content.parse_facts([line for line in out.splitlines() if line and line != content.END])


def _compare_or_fail(expected: content.Facts, got: content.Facts, where: str) -> None:
    rows = content.compare(expected, got)
    bad = [r[0] for r in rows if not r[3]]
    if bad:
        runner.say(content.format_compare(rows))
        raise MoveError(f"{where} does not match the local database ({', '.join(bad)})")


class Steps:
    """db.move's steps and their undos on the real target (plan_steps orders them)."""

    def __init__(self, settings: Settings, record: Record, plan: decide.Plan, url: str, mode: str):
        self.settings, self._record, self.plan, self.url, self.mode = (
            settings,
            record,
            plan,
            url,
            mode,
        )
        self.candidate = plan.to_color
        self.versions = {
            **facts.running_versions(facts.service_states(settings)),
            plan.to_color: plan.to_version,
            plan.from_color: plan.from_version,
        }
        self.databases = {plan.to_color: url}
        self.workers, self.held = (
            settings.app.worker_services(plan.from_color),
            settings.app.worker_services(plan.to_color),
        )
        self.paused: dict[str, int] | None = None
        self.frozen_at, self.freeze_started = "", 0.0
        # the cut-over's container and its session (replicate)
        self.cut_over = contextlib.ExitStack()
        self.cut = None
        self.manifest: dict = {}
        self.local: dict[str, str] = {}

    def traffic_moved(self) -> bool:
        """Whether traffic is on the candidate, as the edge says."""
        live = edge.read_active(self.settings)
        return live is not None and live.color == self.candidate

    def images(self) -> None:
        with runner.step(
            f"{'pulling' if self.settings.registry else 'building'} {self.candidate} images ({self.plan.to_version})"
        ):
            stack.ensure_release_images(self.settings, self.candidate, self.versions, release=True)

    def subscribe(self) -> None:
        replication.subscribe(self.settings, self._record, self.url, _new_password())

    def drop_subscription(self) -> None:
        replication.unsubscribe(self.settings, self.url, check=False)

    def start(self) -> None:
        """On the replica (ready, then gated before the freeze), or on the empty target
        (not waited for: the app's health check may need the tables it lacks until the restore)."""
        candidate.start_candidate(
            self.settings,
            self.plan,
            self.versions,
            self.databases,
            wait=self.mode == "replicate",
            held=self.held,
        )

    def stop_candidate(self) -> None:
        stack.stop_color(self.settings, self.candidate, self.versions)

    def migrations(self) -> None:
        """Replicate: refused (the replica must stay the local database's copy); dump: on the
        restored target, the dump their backup."""
        candidate.candidate_migrations(
            self.settings,
            self._record,
            self.candidate,
            self.versions,
            self.databases,
            verified_backup=False,
            migrate=self.mode == "dump",
        )

    def pre_gates(self) -> None:
        candidate.gate(self.settings, self._record, self.plan, "pre")

    def pause_workers(self) -> None:
        with runner.step(
            f"pausing {self.plan.from_color}'s workers ({', '.join(self.workers)}): their jobs wait for {self.candidate}"
        ):
            paused = stack.stop_color(
                self.settings,
                self.plan.from_color,
                self.versions,
                drain=False,
                services=self.workers,
                databases=self.databases,
            )
            self.paused = {
                name: paused.get(name, 0) for name in self.workers
            }  # (a Swarm's counts: they start with as many)

    def resume_workers(self) -> None:
        if self.paused is None:
            return
        try:
            stack.resume(self.settings, self.workers, self.versions, counts=self.paused, wait=False)
        except ColorgateError as again:
            runner.say(
                f"!! {self.plan.from_color}'s workers did not start again ({again}): the next command starts them"
            )

    def open_cut_over(self) -> None:
        """The cut-over script's container, started and ready before the freeze."""
        env, flags = dbtools.tools_env(
            self.settings,
            {
                **replication.target_env(self.url),
                "CG_FACTS_SQL": content.FACTS_SQL,
                "CG_CONTENT_SQL": content.CONTENT_SQL,
            },
        )
        one = self.cut_over.enter_context(dbtools.one_off(self.settings, env))
        self.cut = self.cut_over.enter_context(
            runner.session(
                dbtools.tools_cmd(
                    self.settings,
                    "sh",
                    "-c",
                    replication.CUTOVER_SCRIPT,
                    "dbtools",
                    relay.ROLE,
                    flags=flags,
                    name=one,
                ),
                env=env,
            )
        )
        _expect(self.cut, "ready")

    def close_cut_over(self) -> None:
        self.cut_over.close()

    def freeze(self) -> None:
        # from here on the local database takes no more writes
        self.frozen_at, self.freeze_started = (
            now(),
            time.monotonic(),
        )
        with runner.step("freezing writes at the edge (reads go on)"):
            edge.set_frozen(self.settings, True)

    def thaw(self) -> None:
        """After a failure: writes open again where traffic is, in the local database first
        (unless traffic moved); if it cannot take them, the edge keeps holding them."""
        try:
            if not self.traffic_moved():
                dbtools.freeze_database(self.settings, False)
        except ColorgateError as again:  # the next command (or db.unfreeze) opens both
            runner.say(
                f"!! the local database still refuses writes ({again}), so the edge keeps holding them"
            )
            raise MoveError(
                "writes are still frozen at the edge (the local database could not take writes again): "
                "end the freeze with `invoke db.unfreeze`"
            ) from None
        self.unfreeze()

    def unfreeze(self) -> None:
        """Writes open at the edge (the local database keeps refusing them after a move:
        nothing may write to it any more)."""
        try:
            edge.set_frozen(self.settings, False)
        except ColorgateError as exc:
            raise MoveError(
                f"writes are still frozen at the edge ({exc}): end the freeze with `invoke db.unfreeze`"
            ) from None
        self._record.timings["write_freeze"] = round(time.monotonic() - self.freeze_started, 3)
        runner.say(
            f"ok writes open again: the write freeze lasted {self._record.timings['write_freeze']:.1f}s"
        )

    def drain(self) -> None:
        with timed(self._record, "drain", "waiting for in-flight writes"):
            _drain(self.settings, script=self.mode == "dump")
            if self.cut is not None:
                self.cut.stdin.write("go\n")
                self.cut.stdin.flush()
                _expect(self.cut, "drained")

    def catch_up(self) -> None:
        with timed(
            self._record, "catch_up", "waiting for the target to catch up (every row the same)"
        ):
            _expect(self.cut, "caught-up")

    def end_replication(self) -> None:
        with timed(self._record, "unsubscribe", "copying sequence values, ending replication"):
            _expect(self.cut, "finished")

    def dump(self) -> None:
        with timed(self._record, "dump", "dumping the local database"):
            self.manifest = db.backup(self.settings)

    def restore(self) -> None:
        with timed(self._record, "restore", f"restoring {self.manifest['name']} into the target"):
            target_env = dbtools.url_env(self.url)
            dbtools.tools(
                self.settings,
                dbtools.RESTORE_SCRIPT,
                f"/backups/{self.manifest['name']}.dump",
                target_env["PGDATABASE"],
                "--no-owner",
                "--no-privileges",
                extra=target_env,
                what="pg_restore",
                major=dbtools.archive_major(self.settings, self.manifest),
            )

    def verify(self) -> None:
        with timed(
            self._record, "verify", "verifying the target against the dump and the local database"
        ):
            expected = content.Facts(self.manifest["counts"], self.manifest["migrations"])
            _compare_or_fail(expected, _facts_of(self.settings, self.url), "the restored target")
            _compare_or_fail(
                expected, _facts_of(self.settings), "a write slipped past the freeze: the dump"
            )
            self.local, copy = facts.parallel(
                lambda source: dbtools.content(self.settings, source), ["", self.url]
            )
            _same_content(self.local, copy, "the restored target differs from the local database")
            verify.record_verify(
                self.settings,
                self.manifest["name"],
                True,
                f"restored into {shown_url(self.url)} by db.move; every row the same",
            )
        self._record.detail = f"backup {self.manifest['name']}"

    def ready(self) -> None:
        with timed(self._record, "ready", f"waiting for {self.candidate} on the restored database"):
            candidate.wait_candidate(
                self.settings,
                self.plan,
                recovering=True,
                services=[
                    s
                    for s in self.settings.app.color_services(self.candidate)
                    if s not in self.held
                ],
            )

    def compare(self) -> None:
        with timed(
            self._record, "compare", "checking that the local database is still what was restored"
        ):
            _same_content(
                self.local,
                dbtools.content(self.settings),
                "a write reached the local database after the restore: it differs from the copy",
            )

    def switch(self) -> None:
        """Switch and post gates (back to the old color when they fail), as a release's."""
        releases.switch_and_verify(
            self.settings, self._record, self.plan, self.versions, pre_gates=False
        )

    def record_if_moved(self) -> None:
        """Interrupted after the switch: traffic and its writes are on the target, so the
        record says so before anything else (else the next command repairs it)."""
        if self.traffic_moved():
            self.record()

    def record(self) -> None:
        edge.write_database_record(
            self.settings,
            {
                "url": shown_url(self.url),
                "moved": self.frozen_at,
                "mode": self.mode,
                "from": "local",
                "live_color": self.candidate,
                "version": self.plan.to_version,
            },
        )

    def remove_relay(self) -> None:
        relay.remove(self.settings)

    def start_workers(self) -> None:
        with runner.step(f"starting {self.candidate}'s workers ({', '.join(self.held)})"):
            counts = {
                name: (self.paused or {}).get(
                    self.settings.app.copy_name(
                        self.settings.app.split_copy(name)[0], self.plan.from_color
                    ),
                    0,
                )
                for name in self.held
            }
            stack.resume(self.settings, self.held, self.versions, self.databases, counts)

    def stop_old(self) -> None:
        with runner.step(
            f"stopping {self.plan.from_color} ({self.plan.from_version}): it uses the old database"
        ):
            stack.stop_color(
                self.settings, self.plan.from_color, self.versions, databases=self.databases
            )


def _drain(settings: Settings, script: bool = True) -> None:
    """Under a freeze: until every write the edge let through before it has been
    answered, and (`script`) no client of the local database is inside a statement;
    then the local database refuses every write (a GET handler's, a worker's)."""
    left = edge.drain_writes(settings)
    if left:
        raise MoveError(
            f"{left} write(s) let through before the freeze are still unanswered after 10 s"
        )
    if script:
        dbtools.tools(settings, DRAIN_SCRIPT, what="waiting for in-flight writes")
    dbtools.freeze_database(settings, True)


def _same_content(expected: dict[str, str], got: dict[str, str], problem: str) -> None:
    differ = sorted(t for t in set(expected) | set(got) if expected.get(t) != got.get(t))
    if differ:
        raise MoveError(f"{problem}, row by row, in {', '.join(differ)}")


def _expect(proc, word: str) -> None:
    """Read the cut-over script's output until it announces `word`; fail with its last
    complaint when it ended first."""
    for line in proc.stdout:
        if line.strip() == word:
            return
    proc.wait(timeout=30)
    last = (runner.redact(proc.stderr.read()).strip().splitlines() or [f"exit {proc.returncode}"])[
        -1
    ]
    raise MoveError(f"the replication cut-over stopped before '{word}': {last}")


def _new_password() -> str:
    password = secrets.token_urlsafe(24)
    runner.add_secret(password)
    return password
