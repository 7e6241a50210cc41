"""Settings loaded from an env profile: its files found (.env.PROFILE beside the app's
compose file, .env.PROFILE.local, the environment) and merged, every key validated up front
into Settings, with the app's contract and its secrets; each error one line naming the key,
the file and the fix."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from deploy import contract
from deploy.config import Settings, project_root
from deploy.errors import ConfigError
from deploy.keys import (
    GATE_PREFIX,
    KEYS,
    PLACEHOLDER,
    PREFIXES,
    PROFILE_DEFAULTS,
    PROFILES,
    SECRET_PREFIX,
    STRICT_PROFILES,
)
from deploy.target import runner


def parse_env_text(text: str, origin: str) -> dict[str, str]:
    """Parse KEY=VALUE lines (comments, blank lines, `export`, quotes); raise on junk."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"^[A-Z_][A-Z0-9_]*$", key):
            raise ConfigError(f"{origin}:{number}: expected KEY=value, got {raw.strip()[:40]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def merge_sources(
    layers: list[tuple[str, Mapping[str, str]]], environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Merge file layers (in order) and the environment; return values and where each came from."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            if any(key.startswith(prefix) and len(key) > len(prefix) for prefix in PREFIXES):
                values[key], sources[key] = value, origin
                continue
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f"did you mean {close[0]}?" if close else "see .env.example for the keys"
                raise ConfigError(f"{origin}: unknown key {key}: {hint}")
            values[key] = value
            sources[key] = origin
    for key in [
        *KEYS,
        *(
            k
            for k in environ
            if any(k.startswith(prefix) and len(k) > len(prefix) for prefix in PREFIXES)
        ),
    ]:
        if key in environ:
            values[key] = environ[key]
            sources[key] = "the environment"
    return values, sources


def load_app(root: Path, value: str, source: str | None = None) -> contract.App:
    """The app's contract, validated (ContractError names the path and the fix). A
    relative path is from the settings' directory; without one, the compose file there,
    else (in Colorgate's own checkout) the sample that ships with it."""
    if not value:
        found = contract.compose_in(root) or (
            project_root() / SAMPLE if (project_root() / SAMPLE).is_dir() else None
        )
        if found is None:
            raise ConfigError(
                f"no compose file in {root}: run colorgate in your app's directory (the one holding its "
                "compose file) or set COLORGATE_APP"
            )
        return contract.load(found)
    path = Path(value)
    return contract.load(
        path if path.is_absolute() else (root if source else project_root()) / path
    )


def validate(
    profile: str,
    root: Path,
    values: Mapping[str, str],
    sources: Mapping[str, str],
    app: contract.App | None = None,
) -> Settings:
    """Turn raw strings into Settings, or raise ConfigError naming key, file and fix."""
    profile_file = f".env.{profile}"
    parsed, raw_values = _parse_keys(profile, values, sources)
    app = app or load_app(root, str(parsed["COLORGATE_APP"]), sources.get("COLORGATE_APP"))
    if app.postgres:
        for key in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
            if not str(parsed[key]).strip():
                raise ConfigError(
                    f"{key} is missing: the app's database {app.postgres.service!r} (x-colorgate.database) needs it; "
                    f"set it in {profile_file}.local or the environment"
                )
    gate_secrets = {key: value for key, value in values.items() if key.startswith(GATE_PREFIX)}
    for key, value in gate_secrets.items():
        if profile in STRICT_PROFILES and PLACEHOLDER.search(value):
            raise ConfigError(
                f"{key} in {sources.get(key, profile_file)} is a placeholder: set a real value in {profile_file}.local or the environment"
            )
    app_secrets = {key: value for key, value in values.items() if key.startswith(SECRET_PREFIX)}
    check_app_secrets(profile, app, app_secrets, sources)
    values = {
        spec.attr or key.removeprefix("COLORGATE_").lower(): parsed[key]
        for key, spec in KEYS.items()
    }
    values["gate_secrets"], values["app_secrets"] = gate_secrets, app_secrets
    registry = parsed["COLORGATE_REGISTRY"]
    project = parsed["COLORGATE_PROJECT"] or app.name
    values.update(  # what follows from more than one key
        project=project,
        image_prefix=registry + "/"
        if registry
        else parsed["COLORGATE_IMAGE_PREFIX"] or f"{project}/",
        image_source="registry" if registry else parsed["COLORGATE_IMAGES"],
        app_path=str(app.file),
        move_relay_host=parsed["COLORGATE_MOVE_RELAY_HOST"] or parsed["COLORGATE_DOMAIN"],
    )
    return Settings(
        profile=profile, root=root, app=app, sources=dict(sources), raw=raw_values, **values
    )


def _parse_keys(
    profile: str, values: Mapping[str, str], sources: Mapping[str, str]
) -> tuple[dict[str, object], dict[str, str]]:
    """Every key parsed (its default where unset), refused where a strict profile holds a
    placeholder; the keys that must differ or go together checked."""
    profile_file = f".env.{profile}"
    parsed: dict[str, object] = {}
    raw_values: dict[str, str] = {}
    for key, spec in KEYS.items():
        origin = sources.get(key, profile_file)
        raw = values.get(key)
        if raw is None or raw == "":
            if spec.default is None:
                raise ConfigError(
                    f"{key} is missing: set it in {profile_file} or {profile_file}.local (see .env.example)"
                )
            raw = spec.default
        if profile in STRICT_PROFILES and PLACEHOLDER.search(raw):
            shown = "a placeholder" if spec.secret else f"a placeholder ({raw!r})"
            raise ConfigError(
                f"{key} in {origin} is {shown}: set a real value in {profile_file}.local or the environment"
            )
        raw_values[key] = raw
        try:
            parsed[key] = spec.parse(raw)
        except ValueError as exc:
            shown = "" if spec.secret else f" {raw!r}"
            raise ConfigError(f"{key}{shown} in {origin} {exc}") from None
    if parsed["COLORGATE_HTTP_PORT"] == parsed["COLORGATE_HTTPS_PORT"]:
        raise ConfigError(
            f"COLORGATE_HTTP_PORT and COLORGATE_HTTPS_PORT are both {parsed['COLORGATE_HTTP_PORT']}: give them different ports"
        )
    if bool(parsed["COLORGATE_MOVE_RELAY_CERT"]) != bool(parsed["COLORGATE_MOVE_RELAY_KEY"]):
        raise ConfigError(
            "COLORGATE_MOVE_RELAY_CERT and COLORGATE_MOVE_RELAY_KEY go together: set both (the relay's "
            "certificate chain and its key) or neither (the edge's certificate)"
        )
    return parsed, raw_values


def check_app_secrets(
    profile: str, app: contract.App, found: Mapping[str, str], sources: Mapping[str, str]
) -> None:
    """Each COLORGATE_SECRET_* key names a secret of the contract, by a value or a command
    (not both), and no value is a placeholder on staging or production."""
    names = {secret.key: secret for secret in app.secrets}
    for key, value in found.items():
        base = key.removesuffix("_COMMAND")
        where = sources.get(key, f".env.{profile}")
        if base not in names:
            known = ", ".join(sorted(s.name for s in app.secrets)) or "none"
            raise ConfigError(
                f"{key} in {where}: the contract names no secret {base.removeprefix(SECRET_PREFIX).lower()!r} "
                f"(x-colorgate.secrets names {known}): add it there, or remove the key"
            )
        if key == base and f"{key}_COMMAND" in found:
            raise ConfigError(
                f"{key} and {key}_COMMAND are both set ({where}, {sources.get(key + '_COMMAND')}): keep the value or the command"
            )
        if key == base and profile in STRICT_PROFILES and PLACEHOLDER.search(value):
            raise ConfigError(
                f"{key} in {where} is a placeholder: set a real value in .env.{profile}.local or the environment"
            )


SAMPLE = "examples/spa-api-postgres"


def settings_dir(start: Path, profile: str) -> Path:
    """Where the settings are read from, found as Compose finds its file: the first of
    `start` and its parents that holds .env.<profile>, .env.<profile>.local or a compose
    file; else `start`."""
    for directory in (start, *start.parents):
        if (
            (directory / f".env.{profile}").is_file()
            or (directory / f".env.{profile}.local").is_file()
            or contract.compose_in(directory)
        ):
            return directory
    return start


def load(
    profile: str | None = None,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the settings for `profile` (default: $COLORGATE_PROFILE or
    development). `overrides` (command-line options such as --host) win over all."""
    environ = os.environ if environ is None else environ
    profile = (profile or environ.get("COLORGATE_PROFILE") or "development").strip()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    root = root or settings_dir(Path.cwd(), profile)
    layers = [(f"Colorgate's {profile} defaults", PROFILE_DEFAULTS[profile])]
    for name in (f".env.{profile}", f".env.{profile}.local"):
        if (root / name).is_file():
            layers.append((name, parse_env_text((root / name).read_text(), name)))
    values, sources = merge_sources(layers, environ)
    for key, (option, value) in (overrides or {}).items():
        values[key], sources[key] = value, option
    settings = validate(profile, root, values, sources)
    runner.add_secret(settings.postgres_password)
    runner.add_secret(settings.local_database_url())
    if settings.postgres_password:
        runner.add_secret(settings.app_db_password())
    runner.add_secret(settings.registry_password)
    for secret in settings.gate_secrets.values():
        runner.add_secret(secret)
    for key, secret in settings.app_secrets.items():
        if not key.endswith("_COMMAND"):
            runner.add_secret(secret)
    if settings.database_url:
        runner.add_secret(unquote(urlsplit(settings.database_url).password or ""))
        runner.add_secret(settings.database_url)
    return settings
