"""The settings' keys: every COLORGATE_* (and POSTGRES_*, DATABASE_URL) key with its
parser, its default (None: required) and whether it is a secret; the parsers say what
a bad value should be, and profiles.py turns that into one line naming the key, the file
and the fix. Database URLs are parsed, shown without their password and rewritten for
clients in urls.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from deploy.colors import COLORS
from deploy.urls import database_url

PROFILES = ("development", "staging", "production")
STRICT_PROFILES = ("staging", "production")  # placeholders are refused here
# What each profile starts from, below its .env.<profile> file (which may be absent, as
# in an app's repository holding only .env.<profile>.local): development on loopback with
# unprivileged ports and a development-only password; staging and production public,
# with real traffic judged after each switch, and no domain (a placeholder, refused) or
# password but the operator's.
PROFILE_DEFAULTS = {
    "development": {
        "COLORGATE_DOMAIN": "localhost",
        "COLORGATE_BIND": "127.0.0.1",
        "COLORGATE_HTTP_PORT": "8080",
        "COLORGATE_HTTPS_PORT": "8443",
        "POSTGRES_DB": "colorgate",
        "POSTGRES_USER": "colorgate",
        "POSTGRES_PASSWORD": "development-only-password",
    },
    **{
        profile: {
            "COLORGATE_DOMAIN": "change-me.example.com",
            "COLORGATE_BIND": "0.0.0.0",
            "COLORGATE_HTTP_PORT": "80",
            "COLORGATE_HTTPS_PORT": "443",
            "COLORGATE_ANALYSIS_INTERVALS": "3",
            "POSTGRES_DB": "colorgate",
            "POSTGRES_USER": "colorgate",
        }
        for profile in STRICT_PROFILES
    },
}
PLACEHOLDER = re.compile(r"change[-_ ]?me|replace[-_ ]?me|<[^>]+>|^x{3,}$|^todo$", re.IGNORECASE)
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
GATE_PREFIX = (
    "COLORGATE_GATE_"  # keys of this prefix: secrets of the app's own gates (a password, a token)
)
# keys of this prefix: the app's own secrets (x-colorgate.secrets): COLORGATE_SECRET_<NAME>
# holds a value, COLORGATE_SECRET_<NAME>_COMMAND a command that prints it (deploy/appsecrets.py)
SECRET_PREFIX = "COLORGATE_SECRET_"
PREFIXES = (GATE_PREFIX, SECRET_PREFIX)
PROJECT_OR_APP = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})?$")
OPTIONAL_IDENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,58})?$")  # room for the app role's "_app"
IMAGE_PREFIX = re.compile(
    r"^([a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?/)*([a-z0-9]+([._-][a-z0-9]+)*/)?$"
)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError("should be a port number from 1 to 65535")
    return int(value)


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("should be an IP address such as 127.0.0.1 or 0.0.0.0") from None


def _network_list(network: Callable[[str], object], hint: str) -> Callable[[str], tuple[str, ...]]:
    """A parser for a comma-separated list of addresses or networks, each read by
    `network` (ipaddress.IPv4Network, ipaddress.ip_network); `hint` says what it should list."""

    def parse(value: str) -> tuple[str, ...]:
        found = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                found.append(str(network(part)))
            except ValueError:
                raise ValueError(f"should list {hint} (not {part!r})") from None
        return tuple(found)

    return parse


_networks = _network_list(
    ipaddress.IPv4Network, "IPv4 addresses or networks such as 203.0.113.7,198.51.100.0/24"
)
# the edge's trusted proxies: a load balancer's or CDN's, IPv6 too
_proxies = _network_list(
    ipaddress.ip_network,
    "the load balancer's or CDN's addresses or networks, such as 10.0.0.0/8,2001:db8::/32",
)


def _pattern(regex: re.Pattern[str], hint: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(hint)
        return value

    return parse


def _whole(low: int, high: int, hint: str) -> Callable[[str], int]:
    """A parser for a whole number from `low` to `high`; `hint` says what it should be."""

    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"should be {hint}")
        return int(value)

    return parse


_seconds = _whole(1, 3600, "a whole number of seconds from 1 to 3600")
_seconds_or_zero = _whole(0, 3600, "a whole number of seconds from 0 to 3600")
_count = _whole(1, 1000, "a whole number from 1 to 1000")
_limit = _whole(0, 1_000_000, "a whole number from 0 (no limit) to 1000000")
# nginx's limit_conn takes no more
_conn_limit = _whole(0, 65535, "a whole number from 0 (no limit) to 65535")


def _age(value: str) -> int:
    """An age as a whole number with a unit (7d, 12h, 30m, 45s), in seconds; 0: never."""
    m = re.fullmatch(r"(\d{1,6})([dhms]?)", value.strip())
    if not m or (m[1] != "0" and not m[2]):
        raise ValueError("should be an age such as 7d, 12h, 30m or 45s (0: never)")
    return int(m[1]) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 0}[m[2]]


def _ratio(low: float, high: float, hint: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise ValueError(f"should be {hint}")
        return number

    return parse


def _size(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[kmg]", value):
        raise ValueError("should be a size such as 512m or 2g")
    return value


def _docker_host(value: str) -> str:
    if value and not re.fullmatch(r"^(unix|tcp|ssh)://\S+$", value):
        raise ValueError("should be empty (local engine) or a URL like ssh://user@host")
    return value


def _color(value: str) -> str:
    color = value.strip().lower()
    if color not in COLORS:
        raise ValueError(f"should be one of {', '.join(COLORS)}")
    return color


@dataclass(frozen=True)
class Key:
    parse: Callable[[str], object]
    default: str | None = None  # None: required
    secret: bool = False
    attr: str = ""  # the Settings field; default: the key without COLORGATE_, lowercased


KEYS: dict[str, Key] = {
    # "": the app's name (compose `name:`, else its directory), so two apps never share volumes
    "COLORGATE_PROJECT": Key(
        _pattern(PROJECT_OR_APP, "should be lowercase letters, digits, '-' or '_'"), ""
    ),
    "COLORGATE_DOMAIN": Key(
        _pattern(HOSTNAME, "should be a host name such as localhost or app.example.com"),
        "localhost",
    ),
    "COLORGATE_BIND": Key(_address, "127.0.0.1"),
    "COLORGATE_HTTP_PORT": Key(_port),
    "COLORGATE_HTTPS_PORT": Key(_port),
    "COLORGATE_INITIAL_COLOR": Key(_color, "blue"),
    # "": <project>/
    "COLORGATE_IMAGE_PREFIX": Key(
        _pattern(IMAGE_PREFIX, "should be an image name prefix ending in '/', such as shop/"), ""
    ),
    # A registry to push images to and pull them from (e.g. ghcr.io/acme): images are
    # then named <registry>/<name>:<tag> and the target pulls instead of building.
    # Empty: images are built by the target's engine. Credentials, when it needs them:
    "COLORGATE_REGISTRY": Key(
        _pattern(
            re.compile(r"^([a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*)?$"),
            "should be a registry and path such as ghcr.io/acme or 127.0.0.1:5000/colorgate",
        ),
        "",
    ),
    "COLORGATE_REGISTRY_USER": Key(str, ""),
    # Without a registry: `build` makes the images with the target's engine; `stream`
    # makes them with this machine's and sends what the target lacks over SSH
    # (docker save | docker load).
    # A release's version when `deploy` is given none: `commit`, the app repository's
    # commit (12 hex digits, `-dirty` when tracked files changed), else (no Git there)
    # the next vN; `counter`: always the next vN (v1, v2, ...).
    "COLORGATE_VERSIONS": Key(
        _pattern(re.compile(r"^(commit|counter)$"), "should be commit or counter"),
        "commit",
        attr="versions",
    ),
    "COLORGATE_IMAGES": Key(
        _pattern(re.compile(r"^(build|stream)$"), "should be build or stream"),
        "build",
        attr="image_source",
    ),
    "COLORGATE_REGISTRY_PASSWORD": Key(str, "", secret=True),
    "COLORGATE_DEBIAN_MIRROR": Key(
        _pattern(re.compile(r"^https?://\S+$"), "should be an http(s) URL"),
        "http://deb.debian.org/debian",
    ),
    # How Colorgate's base images are made: `mmdebstrap`, on this machine from Debian's
    # mirror (Debian or Ubuntu; no registry needed); `image`, by the engine that builds,
    # FROM Debian's official image (COLORGATE_DEBIAN_IMAGE:<suite>-slim) with Debian's
    # packages from the mirror: a machine with only Docker and Python (macOS too).
    "COLORGATE_BASES": Key(
        _pattern(re.compile(r"^(mmdebstrap|image)$"), "should be mmdebstrap or image"), "mmdebstrap"
    ),
    # base images older than this are made again (from the mirror: Debian's security updates)
    # before images are built from them, by deploy, up and bootstrap; 0: only when missing
    "COLORGATE_BASE_MAX_AGE": Key(_age, "7d"),
    "COLORGATE_DEBIAN_IMAGE": Key(
        _pattern(
            re.compile(r"^[a-z0-9][a-z0-9.:/_-]*$"),
            "should be an image name such as debian or registry.example.com/library/debian",
        ),
        "debian",
    ),
    "COLORGATE_DOCKER_HOST": Key(_docker_host, ""),
    # compose: one engine runs the stack (Docker Compose). swarm: that engine is a Swarm
    # manager; each color's services are Swarm services spread over its nodes (a Swarm
    # of more than one node pulls its images from COLORGATE_REGISTRY).
    "COLORGATE_TARGET": Key(
        _pattern(re.compile(r"^(compose|swarm)$"), "should be compose or swarm"), "compose"
    ),
    # on a Swarm: its overlay networks encrypted (IPsec between nodes; the firewall
    # server-setup.sh writes lets ESP in from the peers), or not (no)
    "COLORGATE_SWARM_ENCRYPT": Key(
        _pattern(re.compile(r"^(yes|no)$"), "should be yes or no"), "yes"
    ),
    # An SSH host: the one connection stays open this long after a command (0: closed with it).
    "COLORGATE_SSH_PERSIST": Key(_seconds_or_zero, "60"),
    "COLORGATE_HEALTH_TIMEOUT": Key(_seconds, "120"),
    # The renewer on the server runs certbot renew this often (it renews within 30 days
    # of the end); the edge looks for what it renewed this often.
    "COLORGATE_RENEW_EVERY": Key(
        _whole(1, 604800, "a whole number of seconds from 1 to 604800 (a week)"), "43200"
    ),
    "COLORGATE_RENEWAL_CHECK": Key(_seconds, "60"),
    # The app: its compose file with an x-colorgate block (or the directory holding it).
    # Default: the compose file of the settings' directory (Compose's names), else the sample.
    "COLORGATE_APP": Key(
        _pattern(re.compile(r"^\S*$"), "should be a path to a compose file or its directory"),
        "",
        attr="app_path",
    ),
    "COLORGATE_DRAIN_SECONDS": Key(_seconds, "30"),
    # Per client address at the edge: requests per second (and the burst above it, let
    # through at once) and connections at once; over either, 429. 0: no limit.
    "COLORGATE_RATE_LIMIT": Key(_limit, "200"),
    "COLORGATE_RATE_BURST": Key(_limit, "400"),
    "COLORGATE_CONN_LIMIT": Key(_conn_limit, "200"),
    # behind a load balancer or CDN: the client's address is read from X-Forwarded-For
    # when these sent it (for the limits, the canary and the app); empty: the peer's
    "COLORGATE_TRUSTED_PROXIES": Key(_proxies, ""),
    # Every container (unless its service sets its own): at most this many processes and
    # this much memory; its log rotated at this size, this many files kept.
    "COLORGATE_PIDS_LIMIT": Key(_limit, "512"),
    "COLORGATE_MEMORY_LIMIT": Key(_size, "1g"),
    "COLORGATE_LOG_MAX_SIZE": Key(_size, "10m"),
    "COLORGATE_LOG_MAX_FILES": Key(_count, "3"),
    # After every switch, the new color's real traffic is judged over this many
    # intervals of this many seconds (0: not at all): an interval fails when its 5xx
    # share, its p95 latency, or its p95 against the old color's before the switch is
    # over the bound; this many failed intervals switch traffic back. An interval with
    # fewer requests than the minimum is inconclusive: it passes, is extended by one
    # more interval (at most as many as planned), or fails.
    "COLORGATE_ANALYSIS_INTERVALS": Key(
        _whole(0, 100, "a whole number of intervals from 0 (no analysis) to 100"), "0"
    ),
    "COLORGATE_ANALYSIS_SECONDS": Key(_seconds, "20"),
    "COLORGATE_ANALYSIS_FAILURE_LIMIT": Key(_count, "1"),
    "COLORGATE_ANALYSIS_MAX_ERROR_RATIO": Key(
        _ratio(0, 1, "a share from 0 to 1, such as 0.01 for 1%"), "0.01"
    ),
    "COLORGATE_ANALYSIS_MAX_P95_MS": Key(
        _whole(1, 600_000, "a whole number of milliseconds from 1 to 600000"), "1000"
    ),
    "COLORGATE_ANALYSIS_MAX_SLOWDOWN": Key(
        _ratio(1, 1000, "a factor of at least 1, such as 3"), "3"
    ),
    "COLORGATE_ANALYSIS_MIN_REQUESTS": Key(_limit, "20"),
    "COLORGATE_ANALYSIS_INCONCLUSIVE": Key(
        _pattern(re.compile(r"^(pass|extend|fail)$"), "should be pass, extend or fail"), "pass"
    ),
    # During a db.move write freeze the edge holds each write this long, then 503.
    "COLORGATE_HOLD_SECONDS": Key(_seconds, "5"),
    # allow: the Hardening gate accepts a secret in a container's environment (an app
    # that cannot read its database URL from a file, x-colorgate.database.file)
    "COLORGATE_SECRETS_IN_ENV": Key(
        _pattern(re.compile(r"^(refuse|allow)$"), "should be refuse or allow"), "refuse"
    ),
    "COLORGATE_TLS_CA": Key(
        _pattern(
            re.compile(r"^(local|system|/\S+)$"),
            "should be local, system or an absolute path to a CA bundle",
        ),
        "local",
    ),
    "COLORGATE_TLS_MIN_DAYS": Key(_seconds, "14"),
    "COLORGATE_REPORTS_DIR": Key(
        _pattern(re.compile(r"^\S+$"), "should be a directory path"), "reports", attr="reports_path"
    ),
    "COLORGATE_BACKUP_KEEP": Key(_count, "7"),
    # An off-host copy of every backup: an rclone destination (`remote:path`), the rclone
    # configuration file on this machine that defines the remote (sent to the copy's
    # container on stdin, never stored there), and, for an SFTP remote, a known_hosts
    # file its host key must match.
    "COLORGATE_BACKUP_COPY": Key(
        _pattern(
            re.compile(r"^([A-Za-z0-9_.-]+:\S*)?$"),
            "should be an rclone destination such as offsite:colorgate/prod",
        ),
        "",
    ),
    "COLORGATE_BACKUP_COPY_CONFIG": Key(
        _pattern(re.compile(r"^\S*$"), "should be the path of an rclone configuration file"), ""
    ),
    "COLORGATE_BACKUP_COPY_KNOWN_HOSTS": Key(
        _pattern(re.compile(r"^\S*$"), "should be the path of a known_hosts file"), ""
    ),
    # Where the app's database is: empty for the stack's own PostgreSQL, or the URL of
    # a managed one after `invoke db.move` (checked against the target's record).
    "DATABASE_URL": Key(database_url, "", secret=True),
    # db.move --mode replicate: the managed database subscribes to the local one through
    # a temporary, TLS-only relay published on this address and port of the host ...
    "COLORGATE_MOVE_RELAY_BIND": Key(_address, "0.0.0.0"),
    "COLORGATE_MOVE_RELAY_PORT": Key(_port, "15432"),
    # ... reached only from these IPv4 addresses or networks (the managed database's
    # outgoing addresses, from its provider), enforced by the host firewall that
    # server-setup.sh installs; a move on such a host refuses to start without them.
    "COLORGATE_MOVE_RELAY_ALLOW": Key(_networks, ""),
    # required: a relay bound to a public address needs the host firewall server-setup.sh
    # loads (which lets in COLORGATE_MOVE_RELAY_ALLOW only); none: pg_hba alone guards it
    "COLORGATE_MOVE_RELAY_FIREWALL": Key(
        _pattern(re.compile(r"^(required|none)$"), "should be required or none"), "required"
    ),
    # ... and reaches the host under this name or address (empty: COLORGATE_DOMAIN).
    "COLORGATE_MOVE_RELAY_HOST": Key(
        _pattern(re.compile(r"^[A-Za-z0-9.:-]*$"), "should be a host name or address"), ""
    ),
    # ... and the target checks whose server it reaches there: verify-full (the default)
    # against its own system CAs (sslrootcert=system, PostgreSQL 16 or newer), so the
    # stack's PostgreSQL serves, while the relay runs, a certificate for that name from
    # a CA the target trusts: these files (chain and key, on this machine) or, without
    # them, the edge's ACME certificate. require: TLS, the certificate not checked.
    "COLORGATE_MOVE_RELAY_SSLMODE": Key(
        _pattern(re.compile(r"^(verify-full|require)$"), "should be verify-full or require"),
        "verify-full",
    ),
    "COLORGATE_MOVE_RELAY_CERT": Key(
        _pattern(re.compile(r"^\S*$"), "should be the path of a PEM certificate chain"), ""
    ),
    "COLORGATE_MOVE_RELAY_KEY": Key(
        _pattern(re.compile(r"^\S*$"), "should be the path of a PEM private key"), ""
    ),
    # The app's own PostgreSQL (x-colorgate.database): required only when it has one.
    "POSTGRES_DB": Key(
        _pattern(OPTIONAL_IDENT, "should be a plain identifier (letters, digits, '_'; at most 59)"),
        "",
    ),
    "POSTGRES_USER": Key(
        _pattern(OPTIONAL_IDENT, "should be a plain identifier (letters, digits, '_'; at most 59)"),
        "",
    ),
    "POSTGRES_PASSWORD": Key(str, "", secret=True),
}
