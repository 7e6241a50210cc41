"""The tasks of the database (db.*), the images (images.*), the server (server.setup)
and the certificates (tls.*)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from invoke import Exit

from deploy import (
    access,
    appsecrets,
    edge,
    stack,
    urls,
    views,
)
from deploy import (
    bootstrap as _bootstrap,
)
from deploy import (
    images as _images,
)
from deploy import registry as _registry
from deploy import remote as _remote
from deploy.cli.common import (
    _load,
    _report,
    _target,
    operator_errors,
    task,
    whole,
)
from deploy.data import content, verify
from deploy.data import db as _db
from deploy.data import move as _move
from deploy.data import offsite as _offsite
from deploy.data import retire as _retire
from deploy.edge import acme as _acme
from deploy.edge import tls as _tls
from deploy.errors import BAD_INPUT, BadInput
from deploy.release import recover as _recover
from deploy.release import releases
from deploy.target import runner


@task(
    name="backup",
    help={
        "keep": "backups to keep (default COLORGATE_BACKUP_KEEP)",
        "local": "back up the stack's own PostgreSQL even after db.move (before db.retire-local)",
        "copy": "fail unless the off-host copy (COLORGATE_BACKUP_COPY) is made and checked",
        "yes": "on staging or production: keep fewer than COLORGATE_BACKUP_KEEP (older ones are deleted)",
    },
)
@operator_errors
def db_backup(c, profile=None, host=None, keep=None, local=False, copy=False, yes=False):
    """Dump the database with a checksum and row counts (and an off-host copy if set).

    pg_dump -Fc inside the stack's network; with COLORGATE_BACKUP_COPY set, the dump is
    also copied off the host."""
    keep = None if keep is None else whole(keep, "--keep", 7, 1, 1000)
    _db.check_keep(_load(profile, host), keep, yes)  # before anything is asked of the target
    settings = _target(profile, host)
    if copy and not settings.backup_copy:
        raise BadInput(
            "--copy needs an off-host destination: set COLORGATE_BACKUP_COPY (an rclone remote:path) "
            "and COLORGATE_BACKUP_COPY_CONFIG (its rclone configuration file)"
        )
    if local:
        settings = dataclasses.replace(settings, database_url="")
    else:
        access.check_database(settings)
    with runner.step(f"backing up the database ({urls.shown_url(settings.database_url)})"):
        m = _db.backup(settings, keep=keep, copy_required=bool(settings.backup_copy))
    print(
        f"backup {m['name']}: {m['size']} bytes, sha256 {m['sha256'][:16]}..., "
        f"{sum(m['counts'].values())} rows in {len(m['counts'])} tables"
    )


@task(
    name="backups",
    help={"json": "print machine-readable JSON"},
)
@operator_errors
def db_backups(c, profile=None, host=None, json_=False):
    """List the backups on the target: name, size, age, verify result."""
    settings = _target(profile, host)
    found = _db.list_backups(settings)
    if settings.backup_copy:
        found = _offsite.with_remote(settings, found)
    print(json.dumps(found, indent=2) if json_ else views.format_backups(found))


@task(
    name="verify",
    positional=["backup"],
    help={
        "backup": "backup name, or latest",
    },
)
@operator_errors
def db_verify(c, backup, profile=None, host=None):
    """Restore a backup into a throwaway PostgreSQL and compare every table's row count."""
    settings = _target(profile, host)
    with runner.step(f"verifying backup {backup}"):
        result = verify.verify(settings, None if backup == "latest" else backup)
    if result.rows:
        print(content.format_compare(result.rows))
    print(f"backup {result.name}: {'usable' if result.usable else 'UNUSABLE'} ({result.reason})")
    if not result.usable:
        raise Exit(code=1)


@task(
    name="restore",
    positional=["backup"],
    help={
        "backup": "backup name",
        "yes": "confirm restoring over a staging or production database",
        "unverified": "restore a backup that no restore has verified yet",
    },
)
@operator_errors
def db_restore(c, backup, profile=None, host=None, yes=False, unverified=False):
    """Restore a verified backup into the live database, after a fresh backup.

    One transaction, under the release lock, with writes frozen."""
    settings = _load(profile, host)
    _db.check_restore_allowed(settings, yes)
    _bootstrap.check_docker(settings)
    access.check_database(settings)
    fresh = _db.restore(settings, backup, yes=yes, unverified=unverified)
    print(f"restored {backup}; the database as it was before is in backup {fresh['name']}")


@task(name="migrate")
@operator_errors
def db_migrate(c, profile=None, host=None, break_lock=False):
    """Apply the live color's pending migrations, after a verified backup."""
    settings = _target(profile, host)
    applied = releases.migrate(settings, break_lock=break_lock)
    print(f"applied {applied} migration(s)" if applied else "at head")


@task(
    name="move",
    help={
        "to": "URL of the managed PostgreSQL: postgresql://USER:PASSWORD@HOST:PORT/DB (empty database)",
        "mode": "dump (write freeze for dump, restore and the release) or replicate (logical replication, "
        "shorter freeze)",
    },
)
@operator_errors
def db_move(c, to=None, mode="dump", profile=None, host=None, break_lock=False):
    """Move the app's database to a managed PostgreSQL and release the next color on it, gated."""
    settings = _target(profile, host)
    to = to or os.environ.get("COLORGATE_MOVE_TO", "")
    if not to:
        raise BadInput(
            "db.move needs the target: --to URL, or COLORGATE_MOVE_TO in the environment (keeps the password off the command line)"
        )
    record = _move.move(settings, to, mode=mode, break_lock=break_lock)
    _report(record)
    print(
        f"the database is now {record.detail}; set DATABASE_URL to the target URL in .env.{settings.profile}.local "
        "before the next deploy. The local database is untouched: `invoke db.retire-local` when you are sure."
    )


@task(
    name="retire-local",
    help={"yes": "confirm on staging or production"},
)
@operator_errors
def db_retire_local(c, profile=None, host=None, yes=False):
    """After db.move: stop the stack's own PostgreSQL (volume kept), given a verified backup from after the move."""
    settings = _target(profile, host)
    stopped = _retire.retire(settings, yes=yes)
    print(
        f"retired: stopped {', '.join(stopped)} (the pgdata volume is kept)"
        if stopped
        else "nothing to do"
    )


@task(name="unfreeze")
@operator_errors
def db_unfreeze(c, profile=None, host=None, break_lock=False):
    """End a write freeze left at the edge by an interrupted db.move (refused while a move holds the lock)."""
    settings = _target(profile, host)
    print(
        "writes open again" if _recover.unfreeze(settings, break_lock) else "writes were not frozen"
    )


@task(
    name="push",
    help={
        "registry": "where to push, e.g. ghcr.io/acme (default: COLORGATE_REGISTRY)",
        "version": "version tag (default: the next vN); `latest` is pushed too",
        "host": "the Docker engine that builds and pushes (default: this machine's)",
    },
)
@operator_errors
def images_push(c, registry=None, version=None, profile=None, host=None):
    """Build every image and push it to the registry as VERSION and latest."""
    settings = _target(profile, host, registry)
    if not settings.registry:
        raise BadInput("no registry: pass --registry (e.g. ghcr.io/acme) or set COLORGATE_REGISTRY")
    version = edge.check_version(version or _images.default_version(settings))
    with _registry.registry_session(settings) as env:
        # a fresh CI runner has none: they are made first, as deploy makes them
        _bootstrap.fresh_bases(settings.builder)
        with runner.step(f"building the images ({version})"):
            stack.build(
                settings,
                [*_images.infra_images(settings.app), *settings.app.color_services("blue")],
                {"blue": version},
            )
        with runner.step(f"pushing to {settings.registry}"):
            pushed = _registry.push(settings, version, env)
    print("\n".join(f"pushed {ref}" for ref in pushed))


@task(
    name="send",
    help={
        "version": "release version to send (default: the newest built here)",
    },
)
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
    refs = [
        _images.app_tag(settings, n, t)
        for n in _images.release_images(settings.app)
        for t in (version, "latest")
    ]
    refs += [_images.app_tag(settings, n, "latest") for n in _images.infra_images(settings.app)]
    sent, present = _registry.send(settings, refs)
    print(
        f"sent {len(sent)} image(s), {len(present)} already there"
        + (f": {', '.join(sent)}" if sent else "")
    )


@task(
    name="setup",
    help={
        "host": "the server: ssh://root@host[:port], or a user who may sudo",
        "user": "the deploy user to create",
        "key_file": "public key the deploy user logs in with (default: ~/.ssh/id_ed25519.pub)",
        "ssh_port": "the port sshd listens on afterwards (default: the one in --host, else 22); "
        "the firewall lets the new port in before sshd moves, and keeps the old one until it has",
        "keep_root_login": "leave root's SSH login (by key) on; by default it is switched off, as password logins are, once the deploy user's key works",
        "swarm_peers": "a Swarm node: the other nodes' addresses or CIDRs, comma-separated, let in to Swarm's ports "
        "(2377, 7946, 4789); its engine runs without live-restore, which Swarm refuses; "
        "kept for later runs, `none` forgets them",
    },
)
@operator_errors
def server_setup(
    c,
    host=None,
    user="deploy",
    key_file=None,
    ssh_port=None,
    keep_root_login=False,
    swarm_peers="",
    profile=None,
):
    """Set up a fresh Debian/Ubuntu server for Colorgate (Docker, deploy user, firewall, upgrades); idempotent."""
    settings = _load(profile, host)
    path = Path(key_file).expanduser() if key_file else Path("~/.ssh/id_ed25519.pub").expanduser()
    if not path.is_file():
        raise BadInput(
            f"no public key at {path}: pass --key-file with the key the {user} user will log in with"
        )
    if ssh_port is not None and not (str(ssh_port).isdigit() and 1 <= int(ssh_port) <= 65535):
        raise BadInput(f"--ssh-port {ssh_port!r} should be a port number from 1 to 65535")
    print(
        "\n".join(
            _remote.server_setup(
                settings,
                user,
                path.read_text().strip(),
                _bootstrap.bundled_compose(),
                int(ssh_port) if ssh_port else None,
                keep_root_login,
                swarm_peers,
            )
        )
    )


@task(
    name="status",
    help={"json": "print machine-readable JSON"},
)
@operator_errors
def tls_status(c, profile=None, host=None, json_=False):
    """The certificate the edge serves: subject, SANs, issuer, not-after, days left, source."""
    settings = _target(profile, host)
    data = _tls.status(settings)
    print(json.dumps(data, indent=2) if json_ else _tls.format_status(data))


@task(
    name="init",
    help={
        "email": "address for the CA's expiry notices",
        "domain": "must be COLORGATE_DOMAIN (default)",
        "staging": "use Let's Encrypt's staging directory",
        "directory": "letsencrypt, letsencrypt-staging, or an ACME directory URL",
        "ca_bundle": "CA bundle to trust for the ACME server's own HTTPS (test CAs)",
    },
)
@operator_errors
def tls_init(
    c, email, domain=None, staging=False, directory=None, ca_bundle=None, profile=None, host=None
):
    """Obtain a certificate over HTTP-01 through the edge and move the edge onto it (graceful reload)."""
    from pathlib import Path

    settings = _target(profile, host)
    with runner.step(f"obtaining a certificate for {domain or settings.domain}"):
        data = _acme.init(
            settings,
            email,
            domain=domain,
            directory=directory,
            staging=staging,
            ca_bundle=Path(ca_bundle) if ca_bundle else None,
        )
    print(_tls.format_status(data))


@task(name="renew")
@operator_errors
def tls_renew(c, profile=None, host=None):
    """Renew the certificate when due; reload the edge only when it changed."""
    settings = _target(profile, host)
    data = _acme.renew(settings)
    print(
        ("renewed; the edge now serves it" if data["reloaded"] else "not due yet: nothing changed")
        + f" (expires {data['not_after']}, {data['days_left']} days left)"
    )


@task(name="schedule")
@operator_errors
def tls_schedule(c, profile=None, host=None):
    """Install the daily `invoke tls.renew` on this host (a cron file; idempotent)."""
    settings = _load(profile, host)
    print(_acme.schedule(settings))


@task(name="check", help={"profile": "env profile"})
@operator_errors
def secrets_check(c, profile=None):
    """Say where each of the app's secrets comes from for the profile, without a value.

    Each of x-colorgate.secrets, its command run if it has one; exits 2 when one is
    missing or fails (as a deploy would refuse)."""
    lines, complete = appsecrets.check(_load(profile))
    print("\n".join(lines))
    if not complete:
        raise Exit(code=BAD_INPUT)
