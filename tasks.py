"""Colorgate's command line (invoke). Argument parsing and output only: the work is
done in deploy/. Every task takes --profile (default: $COLORGATE_PROFILE or
development). Set COLORGATE_DEBUG=1 to see commands and tracebacks."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from deploy import bootstrap as _bootstrap, canary as canary_steps, edge, keys as _keys
from deploy import access, apply as _apply, config, swarm as _swarm, views, db as _db, dbtools as _dbtools, render as _render, images as _images, move as _move, history as _history, release, remote as _remote, runner, stack, tls as _tls, traffic as _traffic
from deploy.errors import ColorgateError, Interrupted

DEBUG = os.environ.get("COLORGATE_DEBUG") == "1"
logging.basicConfig(level=logging.DEBUG if DEBUG else logging.WARNING, format="%(message)s")


def operator_errors(fn):
    """Turn Colorgate errors into one line and exit code 1 (a traceback only in debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        runner.on_signals()  # SIGTERM, SIGHUP: the clean-up of Ctrl-C, not an abrupt end
        try:
            return fn(*args, **kwargs)
        except ColorgateError as exc:
            if DEBUG:
                raise
            raise Exit(f"colorgate: {runner.redact(str(exc))}", code=1) from None
        except Interrupted as exc:
            raise Exit(f"colorgate: interrupted by {exc}", code=128 + getattr(signal, str(exc), signal.SIGTERM).value) from None
        except KeyboardInterrupt:
            raise Exit("colorgate: interrupted", code=130) from None
        except BrokenPipeError:  # output piped into `head` and the like
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=141) from None

    return wrapper


HOST_HELP = "the Docker host to act on: ssh://user@host[:port] (default: COLORGATE_DOCKER_HOST, else this machine)"


REGISTRY_HELP = "registry to pull the images from, e.g. ghcr.io/acme (default: COLORGATE_REGISTRY; empty: build them)"


def _load(profile: str | None, host: str | None = None, registry: str | None = None) -> config.Settings:
    """Validated settings for the profile; --host and --registry override the settings."""
    overrides = {}
    if host:
        overrides["COLORGATE_DOCKER_HOST"] = ("--host", host)
    if registry:
        overrides["COLORGATE_REGISTRY"] = ("--registry", registry)
    return config.load(profile, overrides=overrides)


def _target(profile: str | None, host: str | None = None, registry: str | None = None) -> config.Settings:
    """Validated settings for the profile, with the Docker engine checked reachable."""
    settings = _load(profile, host, registry)
    _bootstrap.check_docker(settings)
    if settings.swarm:
        _swarm.check_target(settings)
    return settings


@task(help={"profile": "env profile: development, staging or production", "host": HOST_HELP})
@operator_errors
def bootstrap(c, profile=None, host=None):
    """Check Docker, install the compose plugin and make the base images if missing."""
    settings = _load(profile, host)
    for part, outcome in _bootstrap.bootstrap(settings):
        print(f"{part:<16} {outcome}")


@task(help={"profile": "env profile: development, staging or production", "host": HOST_HELP, "registry": REGISTRY_HELP,
            "version": "version to start when no color is live yet (default: the newest built, or v1)",
            "yes": "on staging or production: recreate the shared services or the edge that changed"})
@operator_errors
def up(c, profile=None, host=None, registry=None, version=None, yes=False):
    """Start the stack, or apply what changed beside the colors of a running one (as apply)."""
    settings = _target(profile, host, registry)
    _say_left_out(settings.app)
    _apply.up(settings, version=version and edge.check_version(version), yes=yes)
    print(views.format_status(views.status(settings)))


@task(help={"profile": "env profile", "host": HOST_HELP, "registry": REGISTRY_HELP, "plan": "only show what would change",
            "yes": "on staging or production: recreate the shared services or the edge that changed"})
@operator_errors
def apply(c, profile=None, host=None, registry=None, plan=False, yes=False):
    """Apply a changed contract or settings beside the colors: routes reloaded, new networks attached, shared services recreated."""
    settings = _target(profile, host, registry)
    if plan:
        print("\n".join(_apply.plan(settings)))
        return
    _apply.up(settings, yes=yes)
    print(views.format_status(views.status(settings)))


@task(help={"profile": "env profile", "host": HOST_HELP, "volumes": "also delete volumes: the database, certificates and routing state"})
@operator_errors
def down(c, profile=None, host=None, volumes=False):
    """Stop and remove the stack's containers; data volumes are kept unless --volumes."""
    settings = _target(profile, host)
    with runner.step("removing the stack" + (" and its volumes" if volumes else " (volumes kept)")):
        stack.down(settings, volumes=volumes)


@task(help={"profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"})
@operator_errors
def status(c, profile=None, host=None, json_=False):
    """Active color, each service's state, health and version, and the URLs."""
    settings = _target(profile, host)
    data = views.status(settings)
    history = edge.read_history(settings) if data["active"] else []
    data["last_release"] = history[-1] if history else None
    if json_:
        print(json.dumps(data, indent=2))
    else:
        print(views.format_status(data))
        if history:
            print("\nlast release:\n" + views.format_history(history, limit=1))


@task(help={"profile": "env profile", "host": HOST_HELP, "routes": "print the edge's nginx routes instead"})
@operator_errors
def render(c, profile=None, host=None, routes=False):
    """Print the compose file Colorgate runs, rendered from the app's x-colorgate block
    (colored copies, shared services, Colorgate's own parts); secrets stay ${...}."""
    settings = _load(profile, host)
    if routes:
        print(_render.edge_routes(settings.app), end="")
        return
    print(_render.dump(_render.compose(settings.app), settings.app.file, _render.wiring(settings.app)), end="")
    _say_left_out(settings.app)


def _say_left_out(app) -> None:
    """The values of the app's compose file that Colorgate replaces or leaves out (on stderr)."""
    for line in _render.wiring(app):
        if line.startswith("!! "):
            runner.say(line)


@task(help={"compose": "the app's compose file, or its directory (default: this directory)",
            "output": "where to write the copy (default: NAME.colorgate.yml beside it)"})
@operator_errors
def init(c, compose=".", output=None):
    """Draft an x-colorgate block for an existing compose file, in a copy of it: what it
    could infer (routes from published ports, health checks, the database) and TODOs."""
    from deploy import contract, scaffold

    path, draft = scaffold.init(Path(compose), Path(output) if output else None)
    print(f"wrote {path} (the original is unchanged)")
    for item in draft.todo:
        print(f"  TODO: {item}")
    try:
        app = contract.load(path)
        print(f"the contract is valid: set COLORGATE_APP={path} and run `invoke render`, then `invoke up`")
        _say_left_out(app)
    except ColorgateError as exc:
        print(f"  still to fix: {exc}")


@task(positional=["service"], help={"service": "a compose service (edge, db, api_blue, ...) or all", "profile": "env profile", "host": HOST_HELP, "follow": "keep following new lines", "tail": "lines per service"})
@operator_errors
def logs(c, service, profile=None, host=None, follow=False, tail=200):
    """Show container logs of SERVICE (e.g. api_blue: a colored service's copy), or of every service with `all`."""
    settings = _target(profile, host)
    views.logs(settings, None if service == "all" else service, follow=follow, tail=int(tail))


@task(help={"seconds": "how far back (default 300)", "profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"})
@operator_errors
def traffic(c, seconds=None, profile=None, host=None, json_=False):
    """Real traffic per color from the edge's request log: requests, 5xx share, p50/p95/p99 latency, versions."""
    try:
        seconds = float(seconds or 300)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= 86400:
        raise ColorgateError("--seconds should be a number of seconds from 1 to 86400")
    settings = _target(profile, host)
    found = _traffic.window(settings, seconds)
    print(json.dumps(_traffic.as_json(found), indent=2) if json_ else _traffic.format_figures(found, seconds))


@task(help={"on": "answer every route with a 503 maintenance page", "off": "serve the app again", "message": "one line for the page",
            "retry": "seconds for Retry-After (default 60)", "profile": "env profile", "host": HOST_HELP})
@operator_errors
def maintenance(c, on=False, off=False, message="", retry=None, profile=None, host=None):
    """Maintenance mode: the edge answers the app's routes with 503, Retry-After and a message; its own health stays up."""
    if on == off:
        raise ColorgateError("say --on or --off")
    retry = str(retry or 60)
    if not retry.isdigit() or not 1 <= int(retry) <= 86400:
        raise ColorgateError("--retry should be a number of seconds from 1 to 86400")
    settings = _target(profile, host)
    changed = _history.maintenance(settings, on, message, int(retry))
    print("maintenance mode on: the app's routes answer 503" if on else
          "maintenance mode off: the app is served" if changed else "maintenance mode was off")


LOCK_HELP = "break a stale release lock left by a run that died (check `invoke status` first)"


def _report(record) -> None:
    if record.outcome == "no-op":
        return
    print(f"{record.action}: {record.from_color} {record.from_version} -> {record.to_color} {record.to_version}: "
          f"{record.outcome} in {record.duration_s:.1f}s")


@task(help={"version": "version tag to deploy (default: the next vN)", "force": "deploy even if this version is live; rebuild images",
            "canary": "shares of users the new version gets first, in turn, each gated and judged: 10 or 10,50",
            "keep_rejected": "turned away after the switch: keep the new color running for debugging (default: stopped once drained)",
            "profile": "env profile", "host": HOST_HELP, "registry": REGISTRY_HELP, "break_lock": LOCK_HELP})
@operator_errors
def deploy(c, version=None, force=False, canary=None, keep_rejected=False, profile=None, host=None, registry=None, break_lock=False):
    """Ship a version to the inactive color: build, start, gate, switch, gate again
    (switching back by itself if the post-switch gates fail)."""
    shares = canary_steps.parse_percents(canary) if canary else ()
    settings = _target(profile, host, registry)
    _report(release.deploy(settings, version=version, force=force, break_lock=break_lock, canary=shares, keep_rejected=keep_rejected))


@task(name="status", help={"profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"})
@operator_errors
def canary_status(c, profile=None, host=None, json_=False):
    """The canary: its color and share of users, and the deploy running it."""
    data = canary_steps.status(_load(profile, host))
    print(json.dumps(data, indent=2) if json_ else canary_steps.format_status(data))


@task(name="promote", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def canary_promote(c, profile=None, host=None):
    """End the canary's analysis now: its deploy switches everyone to it, gated."""
    print(canary_steps.promote(_load(profile, host)))


@task(name="abort", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def canary_abort(c, profile=None, host=None):
    """Every user back on the stable color at once; the deploy stops the canary."""
    print(canary_steps.abort(_load(profile, host)))


REJECTED_HELP = "send traffic to a release that was turned away (its gates or analysis failed after a switch)"


@task(help={"to": "blue or green", "profile": "env profile", "host": HOST_HELP, "break_lock": LOCK_HELP, "force": REJECTED_HELP})
@operator_errors
def switch(c, to=None, profile=None, host=None, break_lock=False, force=False):
    """Move traffic to an already running color, gated (pre gates, switch, post gates)."""
    if not to:  # a default, so that `invoke switch --help` is help, not a color named "--help"
        raise ColorgateError("switch needs a color: invoke switch --to blue (or green)")
    settings = _target(profile, host)
    _report(release.switch(settings, to, break_lock=break_lock, force=force))


@task(help={"profile": "env profile", "host": HOST_HELP, "no_gates": "emergency: switch back at once without running the gates",
            "break_lock": LOCK_HELP, "force": REJECTED_HELP})
@operator_errors
def rollback(c, profile=None, host=None, no_gates=False, break_lock=False, force=False):
    """Go back to the color that was live before the latest switch, gated."""
    settings = _target(profile, host)
    if no_gates:
        runner.say("!! rolling back without gates (--no-gates)")
    _report(release.rollback(settings, use_gates=not no_gates, break_lock=break_lock, force=force))


@task(positional=["spec"], help={"spec": "SERVICE=N: the live color's copy of an app's colored service, run by N tasks",
                                  "profile": "env profile", "host": HOST_HELP})
@operator_errors
def scale(c, spec, profile=None, host=None):
    """On a Swarm: run the live color's copy of a service with N replicas (the next deploy keeps N)."""
    service, sep, count = spec.partition("=")
    if not sep or not count.isdigit() or not 1 <= int(count) <= 100:
        raise ColorgateError(f"scale needs SERVICE=N with N from 1 to 100, got {spec!r}: e.g. invoke scale api=3")
    settings = _target(profile, host)
    copy = _apply.scale(settings, service.strip(), int(count))
    print(f"{copy}: {count} replicas running")


@task(help={"profile": "env profile", "host": HOST_HELP, "limit": "how many records", "json": "print machine-readable JSON",
            "show": "one record in full (1: the latest, 2: the one before, or its id): gates, canary and analysis figures, report"})
@operator_errors
def history(c, profile=None, host=None, limit=20, json_=False, show=None):
    """Deploys, switches and rollbacks recorded on the target, newest last."""
    settings = _target(profile, host)
    records = edge.read_history(settings)
    if show:
        record = views.pick(records, show)
        print(json.dumps(record, indent=2) if json_ else views.format_release(record, settings.root))
        return
    print(json.dumps(records[-int(limit):], indent=2) if json_ else views.format_history(records, int(limit)))


@task(help={"switches": "switches without gates", "gated": "gated switches", "baseline": "naive recreations to compare",
            "rps": "requests a second (wrk, clients that never retry)", "stream": "a server-sent-events path kept open across the switches",
            "path": "a path to request (repeatable; default: each routed service's health path)", "json": "write figures to this JSON file", "png": "write the plot to this PNG file",
            "no_bad_release": "skip the bad release that the analysis must flip back (time to detect, failed requests)",
            "swarm": "run on a test Swarm of this many Docker engines in containers, images pushed to its registry",
            "replicas": "with --swarm: tasks of each colored service (default 3)"},
      iterable=["path"])
@operator_errors
def bench(c, switches=20, gated=3, baseline=3, rps=200, stream="", path=None, json_="benchmarks/out/switch_under_load.json",
          png="benchmarks/out/switch_under_load.png", no_bad_release=False, swarm=0, replicas=3):
    """Benchmark switching under HTTPS load on an isolated stack of the app (or a test Swarm), against the naive
    recreate baseline (exits 3 without figures when the load client could not hold its rate)."""
    from benchmarks import switch_under_load

    code = switch_under_load.main([f"--switches={switches}", f"--gated={gated}", f"--baseline={baseline}", f"--rps={rps}",
                                   *([f"--stream={stream}"] if stream else []), *(f"--path={p}" for p in path or []),
                                   f"--json={json_}", f"--png={png}", *(["--no-bad-release"] if no_bad_release else []),
                                   f"--swarm={swarm}", f"--replicas={replicas}"])
    if code:
        raise SystemExit(code)


@task(name="backup", help={"profile": "env profile", "host": HOST_HELP, "keep": "backups to keep (default COLORGATE_BACKUP_KEEP)",
                           "local": "back up the stack's own PostgreSQL even after db.move (before db.retire-local)",
                           "copy": "fail unless the off-host copy (COLORGATE_BACKUP_COPY) is made and checked"})
@operator_errors
def db_backup(c, profile=None, host=None, keep=None, local=False, copy=False):
    """Dump the database (pg_dump -Fc, inside the stack's network) with a checksum and row
    counts; with COLORGATE_BACKUP_COPY set, also copy it off the host."""
    settings = _target(profile, host)
    if copy and not settings.backup_copy:
        raise ColorgateError("--copy needs an off-host destination: set COLORGATE_BACKUP_COPY (an rclone remote:path) "
                             "and COLORGATE_BACKUP_COPY_CONFIG (its rclone configuration file)")
    if local:
        settings = dataclasses.replace(settings, database_url="")
    else:
        access.check_database(settings)
    with runner.step(f"backing up the database ({_keys.shown_url(settings.database_url)})"):
        m = _db.backup(settings, keep=int(keep) if keep else None, copy_required=bool(settings.backup_copy))
    print(f"backup {m['name']}: {m['size']} bytes, sha256 {m['sha256'][:16]}..., "
          f"{sum(m['counts'].values())} rows in {len(m['counts'])} tables")


@task(name="backups", help={"profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"})
@operator_errors
def db_backups(c, profile=None, host=None, json_=False):
    """List the backups on the target: name, size, age, verify result."""
    settings = _target(profile, host)
    found = _db.list_backups(settings)
    if settings.backup_copy:
        found = _db.with_remote(settings, found)
    print(json.dumps(found, indent=2) if json_ else views.format_backups(found))


@task(name="verify", positional=["backup"], help={"backup": "backup name, or latest", "profile": "env profile", "host": HOST_HELP})
@operator_errors
def db_verify(c, backup, profile=None, host=None):
    """Restore a backup into a throwaway PostgreSQL and compare every table's row count."""
    settings = _target(profile, host)
    with runner.step(f"verifying backup {backup}"):
        result = _db.verify(settings, None if backup == "latest" else backup)
    if result.rows:
        print(_dbtools.format_compare(result.rows))
    print(f"backup {result.name}: {'usable' if result.usable else 'UNUSABLE'} ({result.reason})")
    if not result.usable:
        raise Exit(code=1)


@task(name="restore", positional=["backup"], help={"backup": "backup name", "profile": "env profile", "host": HOST_HELP,
                                                   "yes": "confirm restoring over a staging or production database",
                                                   "unverified": "restore a backup that no restore has verified yet"})
@operator_errors
def db_restore(c, backup, profile=None, host=None, yes=False, unverified=False):
    """Restore a verified backup into the live database (one transaction, under the lock,
    writes frozen), after a fresh backup."""
    settings = _load(profile, host)
    _db.check_restore_allowed(settings, yes)
    _bootstrap.check_docker(settings)
    access.check_database(settings)
    fresh = _db.restore(settings, backup, yes=yes, unverified=unverified)
    print(f"restored {backup}; the database as it was before is in backup {fresh['name']}")


@task(name="migrate", help={"profile": "env profile", "host": HOST_HELP, "break_lock": LOCK_HELP})
@operator_errors
def db_migrate(c, profile=None, host=None, break_lock=False):
    """Apply the live color's pending migrations, after a verified backup."""
    settings = _target(profile, host)
    applied = release.migrate(settings, break_lock=break_lock)
    print(f"applied {applied} migration(s)" if applied else "at head")


@task(name="move", help={"to": "URL of the managed PostgreSQL: postgresql://USER:PASSWORD@HOST:PORT/DB (empty database)",
                         "mode": "dump (write freeze for dump, restore and the release) or replicate (logical replication, "
                                 "shorter freeze)", "profile": "env profile", "host": HOST_HELP, "break_lock": LOCK_HELP})
@operator_errors
def db_move(c, to=None, mode="dump", profile=None, host=None, break_lock=False):
    """Move the app's database to a managed PostgreSQL and release the next color on it, gated."""
    settings = _target(profile, host)
    to = to or os.environ.get("COLORGATE_MOVE_TO", "")
    if not to:
        raise ColorgateError("db.move needs the target: --to URL, or COLORGATE_MOVE_TO in the environment (keeps the password off the command line)")
    record = _move.move(settings, to, mode=mode, break_lock=break_lock)
    _report(record)
    print(f"the database is now {record.detail}; set DATABASE_URL to the target URL in .env.{settings.profile}.local "
          "before the next deploy. The local database is untouched: `invoke db.retire-local` when you are sure.")


@task(name="retire-local", help={"profile": "env profile", "host": HOST_HELP, "yes": "confirm on staging or production"})
@operator_errors
def db_retire_local(c, profile=None, host=None, yes=False):
    """After db.move: stop the stack's own PostgreSQL (volume kept), given a verified backup from after the move."""
    settings = _target(profile, host)
    stopped = _move.retire_local(settings, yes=yes)
    print(f"retired: stopped {', '.join(stopped)} (the pgdata volume is kept)" if stopped else "nothing to do")


@task(name="unfreeze", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def db_unfreeze(c, profile=None, host=None):
    """End a write freeze left at the edge by an interrupted db.move."""
    settings = _target(profile, host)
    print("writes open again" if _move.unfreeze(settings) else "writes were not frozen")


@task(name="push", help={"registry": "where to push, e.g. ghcr.io/acme (default: COLORGATE_REGISTRY)",
                         "version": "version tag (default: the next vN); `latest` is pushed too", "profile": "env profile",
                         "host": "the Docker engine that builds and pushes (default: this machine's)"})
@operator_errors
def images_push(c, registry=None, version=None, profile=None, host=None):
    """Build every image and push it to the registry as VERSION and latest."""
    settings = _target(profile, host, registry)
    if not settings.registry:
        raise ColorgateError("no registry: pass --registry (e.g. ghcr.io/acme) or set COLORGATE_REGISTRY")
    version = edge.check_version(version or _images.next_version(_images.release_tags(settings)))
    with _images.registry_session(settings) as env:
        with runner.step(f"building the images ({version})"):
            stack.build(settings, [*_images.infra_images(settings.app), *settings.app.color_services("blue")], {"blue": version})
        with runner.step(f"pushing to {settings.registry}"):
            pushed = _images.push(settings, version, env)
    print("\n".join(f"pushed {ref}" for ref in pushed))


@task(name="send", help={"version": "release version to send (default: the newest built here)", "profile": "env profile",
                         "host": HOST_HELP})
@operator_errors
def images_send(c, version=None, profile=None, host=None):
    """Without a registry: make every image here and send the target only those it lacks (over SSH)."""
    settings = dataclasses.replace(_target(profile, host), image_source="stream")
    builder = settings.builder
    version = edge.check_version(version or (_images.release_tags(builder) or ["v1"])[-1])
    with runner.step(f"making the images here ({version})"):
        stack.build(builder, list(_images.infra_images(settings.app)), {})
        if not stack.release_images_exist(builder, version):
            stack.build(builder, settings.app.color_services("blue"), {"blue": version})
    refs = [_images.app_tag(settings, n, t) for n in _images.release_images(settings.app) for t in (version, "latest")]
    refs += [_images.app_tag(settings, n, "latest") for n in _images.infra_images(settings.app)]
    sent, present = _images.send(settings, refs)
    print(f"sent {len(sent)} image(s), {len(present)} already there" + (f": {', '.join(sent)}" if sent else ""))


@task(name="setup", help={"host": "the server: ssh://root@host[:port], or a user who may sudo", "user": "the deploy user to create",
                          "key_file": "public key the deploy user logs in with (default: ~/.ssh/id_ed25519.pub)",
                          "ssh_port": "the port sshd listens on afterwards (default: the one in --host, else 22); "
                                      "the firewall lets the new port in before sshd moves, and keeps the old one until it has",
                          "keep_root_login": "leave root's SSH login (by key) on; by default it is switched off once the deploy user works",
                          "swarm_peers": "a Swarm node: the other nodes' addresses or CIDRs, comma-separated, let in to Swarm's ports "
                                         "(2377, 7946, 4789); its engine runs without live-restore, which Swarm refuses; "
                                         "kept for later runs, `none` forgets them",
                          "profile": "env profile"})
@operator_errors
def server_setup(c, host=None, user="deploy", key_file=None, ssh_port=None, keep_root_login=False, swarm_peers="", profile=None):
    """Set up a fresh Debian/Ubuntu server for Colorgate (Docker, deploy user, firewall, upgrades); idempotent."""
    settings = _load(profile, host)
    path = Path(key_file).expanduser() if key_file else Path("~/.ssh/id_ed25519.pub").expanduser()
    if not path.is_file():
        raise ColorgateError(f"no public key at {path}: pass --key-file with the key the {user} user will log in with")
    if ssh_port is not None and not (str(ssh_port).isdigit() and 1 <= int(ssh_port) <= 65535):
        raise ColorgateError(f"--ssh-port {ssh_port!r} should be a port number from 1 to 65535")
    print("\n".join(_remote.server_setup(settings, user, path.read_text().strip(), _bootstrap.bundled_compose(),
                                         int(ssh_port) if ssh_port else None, keep_root_login, swarm_peers)))


@task(name="status", help={"profile": "env profile", "host": HOST_HELP, "json": "print machine-readable JSON"})
@operator_errors
def tls_status(c, profile=None, host=None, json_=False):
    """The certificate the edge serves: subject, SANs, issuer, not-after, days left, source."""
    settings = _target(profile, host)
    data = _tls.status(settings)
    print(json.dumps(data, indent=2) if json_ else _tls.format_status(data))


@task(name="init", help={"email": "address for the CA's expiry notices", "domain": "must be COLORGATE_DOMAIN (default)",
                         "staging": "use Let's Encrypt's staging directory",
                         "directory": "letsencrypt, letsencrypt-staging, or an ACME directory URL",
                         "ca_bundle": "CA bundle to trust for the ACME server's own HTTPS (test CAs)", "profile": "env profile", "host": HOST_HELP})
@operator_errors
def tls_init(c, email, domain=None, staging=False, directory=None, ca_bundle=None, profile=None, host=None):
    """Obtain a certificate over HTTP-01 through the edge and move the edge onto it (graceful reload)."""
    from pathlib import Path

    settings = _target(profile, host)
    with runner.step(f"obtaining a certificate for {domain or settings.domain}"):
        data = _tls.init(settings, email, domain=domain, directory=directory, staging=staging,
                         ca_bundle=Path(ca_bundle) if ca_bundle else None)
    print(_tls.format_status(data))


@task(name="renew", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def tls_renew(c, profile=None, host=None):
    """Renew the certificate when due; reload the edge only when it changed."""
    settings = _target(profile, host)
    data = _tls.renew(settings)
    print(("renewed; the edge now serves it" if data["reloaded"] else "not due yet: nothing changed")
          + f" (expires {data['not_after']}, {data['days_left']} days left)")


@task(name="schedule", help={"profile": "env profile", "host": HOST_HELP})
@operator_errors
def tls_schedule(c, profile=None, host=None):
    """Install the daily `invoke tls.renew` on this host (a cron file; idempotent)."""
    settings = _load(profile, host)
    print(_tls.schedule(settings))


ns = Collection(bootstrap, init, up, apply, down, status, render, logs, traffic, maintenance, deploy, switch, rollback, history, scale, bench)
ns.add_collection(Collection("tls", tls_status, tls_init, tls_renew, tls_schedule))
ns.add_collection(Collection("server", server_setup))
ns.add_collection(Collection("canary", canary_status, canary_promote, canary_abort))
ns.add_collection(Collection("images", images_push, images_send))
ns.add_collection(Collection("db", db_backup, db_backups, db_verify, db_restore, db_migrate, db_move, db_retire_local, db_unfreeze))
