"""The app's own secrets (x-colorgate.secrets): an API key, a signing key. Each one's
value is a setting (COLORGATE_SECRET_<NAME> in `.env.<profile>.local` or the
environment) or is printed by a command the setting COLORGATE_SECRET_<NAME>_COMMAND
names: a secret manager's CLI run on this machine (`op read op://prod/stripe/key`,
`pass show shop/stripe`, `aws secretsmanager get-secret-value --query SecretString
--output text --secret-id shop/stripe`, `sops -d --extract '["stripe"]' secrets.yaml`).
Read once per process, masked in every output from then on, and delivered to the
services that need them as read-only files (access.secret_files): never an image, a
container's environment, the history or a report."""

from __future__ import annotations

import subprocess

from deploy.config import Settings
from deploy.contract import Secret
from deploy.errors import ConfigError
from deploy.target import runner

COMMAND_TIMEOUT_S = 120
_read: dict[tuple[str, ...], str] = {}  # a command runs once per process


def source(settings: Settings, secret: Secret) -> tuple[str, str] | None:
    """Where `secret`'s value comes from: ("value" | "command", the file or "the
    environment"), or None when this profile gives it none."""
    for key, kind in ((secret.key, "value"), (f"{secret.key}_COMMAND", "command")):
        if key in settings.app_secrets:
            return kind, settings.sources.get(key, f".env.{settings.profile}")
    return None


def value(settings: Settings, secret: Secret) -> str:
    """`secret`'s value (its command run once per process), masked from then on."""
    cache = (
        str(settings.root),
        settings.profile,
        secret.name,
        settings.app_secrets.get(secret.key, ""),
        settings.app_secrets.get(f"{secret.key}_COMMAND", ""),
    )
    if cache in _read:
        return _read[cache]
    found = source(settings, secret)
    if found is None:
        raise ConfigError(
            f"the secret {secret.name} (x-colorgate.secrets) has no value for {settings.profile}: set {secret.key}, "
            f"or {secret.key}_COMMAND to a command that prints it, in .env.{settings.profile}.local or the environment"
        )
    kind, where = found
    text = (
        settings.app_secrets[secret.key]
        if kind == "value"
        else _run(settings.app_secrets[f"{secret.key}_COMMAND"], secret, where)
    )
    if not text:
        raise ConfigError(
            f"the secret {secret.name} is empty ({secret.key}{'_COMMAND' * (kind == 'command')} in {where}): give it a value"
        )
    runner.add_secret(text)
    _read[cache] = text
    return text


def values(settings: Settings) -> dict[str, str]:
    """Every secret of the contract by name (a missing one stops with one line)."""
    return {secret.name: value(settings, secret) for secret in settings.app.secrets}


def _run(command: str, secret: Secret, where: str) -> str:
    """What `command` prints (one trailing newline dropped); what it says on stderr is
    shown only as its last line, masked, when it fails."""
    what = f"{secret.key}_COMMAND in {where}"
    try:
        proc = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{what} did not finish in {COMMAND_TIMEOUT_S}s: check that the secret manager is signed in"
        ) from None
    if proc.returncode != 0:
        runner.add_secret(proc.stdout.strip())
        said = (proc.stderr.strip().splitlines() or ["it printed nothing on stderr"])[-1]
        raise ConfigError(f"{what} failed (exit {proc.returncode}): {runner.redact(said)}")
    return proc.stdout[:-1] if proc.stdout.endswith("\n") else proc.stdout


def check(settings: Settings) -> tuple[list[str], bool]:
    """`invoke secrets.check`: a line for each secret (where its value comes from, and
    for a command, that it ran and how long the value is), never a value; and whether
    every one has a value."""
    lines, complete = [], True
    for secret in settings.app.secrets:
        found = source(settings, secret)
        to = f"-> {', '.join(secret.services)} as {secret.path}" + (
            f" (${secret.env})" if secret.env else ""
        )
        if found is None:
            complete = False
            lines.append(
                f"MISSING  {secret.name}: set {secret.key} or {secret.key}_COMMAND in .env.{settings.profile}.local  {to}"
            )
            continue
        try:
            text = value(settings, secret)
        except ConfigError as exc:
            complete = False
            lines.append(f"FAILED   {secret.name}: {exc}")
            continue
        how = (
            f"printed by {secret.key}_COMMAND in {found[1]}"
            if found[0] == "command"
            else f"{secret.key} in {found[1]}"
        )
        lines.append(f"ok       {secret.name}: {how} ({len(text)} characters)  {to}")
    return lines or ["the contract names no secrets (x-colorgate.secrets)"], complete
