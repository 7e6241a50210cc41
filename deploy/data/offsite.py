"""Off-host copies of the backups (COLORGATE_BACKUP_COPY): rclone, in a one-off
container on the target with the `backups` volume, so a copy goes from the database's
host straight to the remote; its configuration comes on stdin, its credentials are
masked in everything Colorgate prints. An SFTP remote must have its host key pinned.
"""

from __future__ import annotations

import configparser
import re
from datetime import UTC, datetime
from pathlib import Path

from deploy import bases
from deploy.config import Settings
from deploy.errors import ColorgateError, ConfigError
from deploy.target import runner

COPY_SCRIPT = """set -eu
(umask 077; cat > /tmp/rclone.conf)
export RCLONE_CONFIG=/tmp/rclone.conf
if [ -n "${CG_KNOWN_HOSTS:-}" ]; then
  printf '%s\\n' "$CG_KNOWN_HOSTS" > /tmp/known_hosts
  export RCLONE_SFTP_KNOWN_HOSTS_FILE=/tmp/known_hosts
fi
case "$1" in
  send)
    for f in "$3.dump" "$3.manifest.json"; do rclone copyto "/backups/$f" "$2/$f"; done
    sum=$(rclone hashsum sha256 "$2/$3.dump" 2>/dev/null | cut -d' ' -f1 || true)
    [ -n "$sum" ] || sum=$(rclone hashsum sha256 --download "$2/$3.dump" | cut -d' ' -f1)
    echo "sha256=$sum" ;;
  list)
    rclone lsf --include '*.manifest.json' "$2" | sed 's/[.]manifest[.]json$//' ;;
  fetch)
    for f in "$3.dump" "$3.manifest.json"; do rclone copyto "$2/$f" "/backups/$f.new"; done
    for f in "$3.dump" "$3.manifest.json"; do mv "/backups/$f.new" "/backups/$f"; done ;;
esac
"""
# rclone options whose values are credentials (masked in everything Colorgate prints)
SECRET_OPTION = re.compile(
    r"^\s*(\w*pass\w*|\w*secret\w*|\w*token\w*|key_pem|access_key_id|account_key)\s*=\s*(\S.*?)\s*$",
    re.IGNORECASE,
)


def copy(settings: Settings, action: str, name: str = "") -> str:
    """Run COPY_SCRIPT's `action` against the remote; its output."""

    def read(path: str, key: str) -> str:
        if not path:
            return ""
        try:
            return Path(path).expanduser().read_text()
        except OSError as exc:
            raise ColorgateError(
                f"cannot read {key} ({path}): {exc.strerror}; point it at the file"
            ) from None

    config = read(settings.backup_copy_config, "COLORGATE_BACKUP_COPY_CONFIG")
    for line in config.splitlines():
        found = SECRET_OPTION.match(line)
        if found:
            runner.add_secret(found[2])
    known = read(settings.backup_copy_known_hosts, "COLORGATE_BACKUP_COPY_KNOWN_HOSTS")
    if not known and unpinned_sftp(config, settings.backup_copy):
        raise ConfigError(
            f"the off-host copy to {settings.backup_copy} is SFTP, and no host key is pinned, so any machine "
            "answering as that server would get the backups: set COLORGATE_BACKUP_COPY_KNOWN_HOSTS to a known_hosts "
            "file for it (`ssh-keyscan HOST > FILE`, then check its fingerprint)"
        )
    base = bases.BASES["rclone"]
    if not bases.image_exists(settings, base.tag(settings.base_source)):
        bases.build_bases(settings, [base])
    cmd = [
        "docker",
        "run",
        "--rm",
        "-i",
        "-v",
        f"{settings.project}_backups:/backups",
        "-e",
        "CG_KNOWN_HOSTS",
        base.tag(settings.base_source),
        "sh",
        "-c",
        COPY_SCRIPT,
        "copy",
        action,
        settings.backup_copy,
        name,
    ]
    proc = runner.run(
        cmd,
        input=config,
        env={**settings.docker_env(), "CG_KNOWN_HOSTS": known},
        check=False,
        what=f"off-host copy ({action})",
    )
    if proc.returncode != 0:
        last = (runner.redact(proc.stderr).strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ColorgateError(
            f"the off-host copy ({action}) to {settings.backup_copy} failed: {last}; "
            "check COLORGATE_BACKUP_COPY, its rclone configuration and the remote"
        )
    return proc.stdout


def send(settings: Settings, manifest: dict) -> dict:
    """Copy a backup (dump and manifest) to the remote and check the copy's checksum
    there; what db records beside the backup."""
    name = manifest["name"]
    with runner.step(f"copying backup {name} to {settings.backup_copy}"):
        out = copy(settings, "send", name)
    got = next(
        (line.split("=", 1)[1] for line in out.splitlines() if line.startswith("sha256=")), ""
    )
    if got != manifest["sha256"]:
        raise ColorgateError(
            f"the copy of {name} at {settings.backup_copy} does not match its checksum "
            f"({got[:16] or 'none'}... against {manifest['sha256'][:16]}...)"
        )
    return {
        "remote": settings.backup_copy,
        "sha256": got,
        "copied": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def remote_backups(settings: Settings) -> list[str]:
    """Names of the backups at the remote (COLORGATE_BACKUP_COPY), oldest first."""
    return sorted(line.strip() for line in copy(settings, "list").splitlines() if line.strip())


def with_remote(settings: Settings, backups: list[dict]) -> list[dict]:
    """The target's backups, plus those only the remote still has (the host lost them)."""
    here = {b["manifest"]["name"] for b in backups}
    there = [
        {"manifest": {"name": n}, "remote_only": True}
        for n in remote_backups(settings)
        if n not in here
    ]
    return sorted([*backups, *there], key=lambda b: b["manifest"]["name"])


def unpinned_sftp(config: str, remote: str) -> bool:
    """The rclone configuration's remote that `remote` (NAME:path) names is SFTP, or wraps
    one (an encrypting `crypt`), that pins no host key of its own (`known_hosts_file`):
    rclone would then accept any."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(config)
    except configparser.Error:
        return False  # rclone says what is wrong with it
    name = remote.split(":", 1)[0]
    # through the remotes that wrap another (crypt, compress, chunker, alias: `remote = NAME:path`)
    for _ in range(10):
        if not parser.has_section(name):
            return False
        section = parser[name]
        if section.get("type", "").strip() == "sftp":
            return not section.get("known_hosts_file", "").strip()
        name = section.get("remote", "").strip().split(":", 1)[0]
    return False
