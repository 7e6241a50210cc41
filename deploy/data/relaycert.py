"""The relay's certificate: the edge's own or one given (COLORGATE_MOVE_RELAY_CERT/KEY),
whether a managed database's subscription can verify it in full (verify-full), and the
check of what the relay serves over TLS."""

from __future__ import annotations

from pathlib import Path

from deploy.config import Settings
from deploy.edge import tls
from deploy.errors import ConfigError, MoveError
from deploy.target import runner

# in the data directory while the relay runs
CERT_FILES = (
    "colorgate-relay.crt",
    "colorgate-relay.key",
)


SYSTEM_ROOTS_SINCE = 16  # the first PostgreSQL whose libpq takes sslrootcert=system


def verify_full_possible(target_major: int) -> None:
    if target_major < SYSTEM_ROOTS_SINCE:
        raise MoveError(
            f"the target runs PostgreSQL {target_major}, which cannot check the relay's certificate against its "
            f"system CAs (sslrootcert=system needs {SYSTEM_ROOTS_SINCE} or newer): set COLORGATE_MOVE_RELAY_SSLMODE=require "
            "to let it subscribe over TLS unchecked, or use --mode dump"
        )


def certificate(settings: Settings) -> tuple[str, str, str]:
    """(chain, key, where from) that the stack's PostgreSQL serves while the relay runs,
    checked for COLORGATE_MOVE_RELAY_HOST: the files the settings name, else the edge's."""
    host = settings.move_relay_host
    if settings.move_relay_cert:
        texts = []
        for name, value in (
            ("COLORGATE_MOVE_RELAY_CERT", settings.move_relay_cert),
            ("COLORGATE_MOVE_RELAY_KEY", settings.move_relay_key),
        ):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"{name}={value} is not a file here: give the path of the relay's PEM "
                    f"{'certificate chain' if name.endswith('CERT') else 'private key'} for {host}"
                )
            texts.append(path.read_text())
        runner.add_secret(texts[1].strip())
        chain, key, origin = (
            texts[0],
            texts[1],
            f"the relay's certificate ({settings.move_relay_cert})",
        )
    else:
        chain, key, local = tls.key_pair(settings)
        if local:
            raise MoveError(
                f"the edge serves a certificate of its own local CA, which the target does not trust, so it could not "
                f"check the relay: get an ACME certificate for {host} first (`invoke tls.init`), give one in "
                "COLORGATE_MOVE_RELAY_CERT/KEY, or set COLORGATE_MOVE_RELAY_SSLMODE=require to subscribe unchecked"
            )
        origin = "the edge's certificate"
    tls.check_pair(chain, key, host, origin, "COLORGATE_MOVE_RELAY_HOST", MoveError)
    return chain, key, origin


def check_tls(settings: Settings, target_major: int) -> None:
    """Before a replicate move changes anything: the target can check the relay's
    certificate, and it is one it would accept (or the settings say it need not)."""
    if settings.move_relay_sslmode == "verify-full":
        verify_full_possible(target_major)
        _, _, origin = certificate(settings)
        runner.say(
            f"   relay TLS: the target checks {origin} for {settings.move_relay_host} against its system CAs (verify-full)"
        )
    else:
        runner.say(
            "   relay TLS: the target does not check the relay's certificate (COLORGATE_MOVE_RELAY_SSLMODE=require)"
        )
