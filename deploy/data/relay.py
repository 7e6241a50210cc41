"""db.move's replication relay (replicate mode, deploy/data/replication.py): while a move
runs, the managed database subscribes to the stack's own PostgreSQL through a TCP relay
(socat in a dbtools container, `dbrelay`) published on COLORGATE_MOVE_RELAY_BIND:PORT.
It starts closed and forwards nothing until the database's rules for it are written
(`launch`, then `start` opens it), and forwards a few connections at once at most
(render.RELAY_CONNECTIONS). Three things keep that door narrow, each opened with the
relay and closed with it (`start`, `remove`):

    the database's rules  pg_hba.conf, first: through the relay only the one-off move
                          role, only over TLS; every other role coming through it is
                          rejected (PostgreSQL sees the relay's address, not the client's)
    the host firewall     on a host set up by server-setup.sh, published ports other
                          than 80/443 are dropped in the forward hook; the relay's port
                          is let in from COLORGATE_MOVE_RELAY_ALLOW only, as elements of
                          the set `inet colorgate relay` (with a timeout, so a host that
                          never runs Colorgate again does not keep them)
    the one-off role      its publication and slot (dropped by move.py and replication.drop)

The target checks the server it reaches through the relay (COLORGATE_MOVE_RELAY_SSLMODE
verify-full, the default): against its system CAs (`sslrootcert=system`, PostgreSQL 16
or newer; a managed database has no file of ours to check against), for the name
COLORGATE_MOVE_RELAY_HOST. So while the relay runs, the stack's PostgreSQL serves a
certificate for that name from a public CA (relaycert.certificate, `serve`): the files in
COLORGATE_MOVE_RELAY_CERT/KEY, or the edge's own ACME certificate, in its data
directory and named by ALTER SYSTEM, both taken back with the relay.

A move that died leaves the relay running: the next command's reconcile removes it
and all of the above (recover.py).
"""

from __future__ import annotations

import ipaddress
import time

from deploy import bootstrap, render
from deploy.config import Settings
from deploy.data.relaycert import CERT_FILES
from deploy.errors import ColorgateError, MoveError
from deploy.target import compose, runner, targets
from deploy.target.dbfacts import psql_cmd
from deploy.target.facts import container as container_of
from deploy.target.facts import inspect as inspect_container

ROLE = "colorgate_move"  # the one-off replication role, publication, slot and subscription
SERVICE = "dbrelay"

# The database's client rules while the relay runs, first in pg_hba.conf (the first
# line that matches decides): through the relay, only the move role, only over TLS, from
# the relay's own address(es); every other role coming through it is rejected. The
# block is removed with the relay; PostgreSQL reads the file again on pg_reload_conf().
# Edited in place (`cat >`), so its owner and mode stay whatever the image made them.
HBA = ("# colorgate-relay begin", "# colorgate-relay end")
HBA_SCRIPT = f"""set -eu
f="$PGDATA/pg_hba.conf"
t=$(mktemp)
{{
  if [ $# -gt 0 ]; then
    echo '{HBA[0]}'
    for ip in "$@"; do echo "hostssl all {ROLE} $ip/32 scram-sha-256"; done
    for ip in "$@"; do echo "host all all $ip/32 reject"; done
    echo '{HBA[1]}'
  fi
  awk '$0 == "{HBA[0]}" {{ skip = 1 }} !skip {{ print }} $0 == "{HBA[1]}" {{ skip = 0 }}' "$f"
}} > "$t"
cat "$t" > "$f"
rm -f "$t"
"""

# The host firewall's side (run with the host's network and NET_ADMIN only): `open PORT
# NET...` lets NET reach the published PORT, `close PORT NET...` takes that back. The
# set is server-setup.sh's; a host without it is said (`absent`) and left alone.
# Open the relay (the file it waits for), then wait until it listens on 5433 (0x1539).
OPEN_SCRIPT = """touch "$1"
i=0
while [ $i -lt 100 ]; do
  grep -q ':1539 00000000:0000 0A' /proc/net/tcp && exit 0
  i=$((i + 1)); sleep 0.05
done
echo "the replication relay did not start listening" >&2; exit 1
"""
FIREWALL_SET = "inet colorgate relay"
FIREWALL_TIMEOUT = "24h"  # longer than any move; an element of one that died expires by itself
FIREWALL_SCRIPT = f"""set -eu
op=$1 port=$2
shift 2
nft list set {FIREWALL_SET} > /dev/null 2>&1 || {{ echo absent; exit 0; }}
for net in "$@"; do
  if [ "$op" = open ]; then
    nft add element {FIREWALL_SET} "{{ $net . $port timeout {FIREWALL_TIMEOUT} }}"
  else
    nft delete element {FIREWALL_SET} "{{ $net . $port }}" 2> /dev/null || true
  fi
done
echo present
"""

# --- the certificate the relay serves -----------------------------------------------


# `on CHAIN` (the key on stdin) writes the files, owned as the data directory is;
# `off` removes them.
SERVE_SCRIPT = f"""set -eu
cd "$PGDATA"
if [ "$1" = on ]; then
  umask 077
  printf '%s' "$2" > {CERT_FILES[0]}
  cat > {CERT_FILES[1]}
  if [ "$(id -u)" = 0 ]; then chown "$(stat -c %u:%g .)" {CERT_FILES[0]} {CERT_FILES[1]}; fi
else
  rm -f {CERT_FILES[0]} {CERT_FILES[1]}
fi
"""
# ALTER SYSTEM cannot run in a transaction or a DO block: psql's \\if decides
SERVE_SQL = f"""ALTER SYSTEM SET ssl_cert_file = '{CERT_FILES[0]}';
ALTER SYSTEM SET ssl_key_file = '{CERT_FILES[1]}';
SELECT pg_reload_conf();
"""
UNSERVE_SQL = f"""SELECT current_setting('ssl_cert_file') = '{CERT_FILES[0]}' AS ours \\gset
\\if :ours
ALTER SYSTEM RESET ssl_cert_file;
ALTER SYSTEM RESET ssl_key_file;
SELECT pg_reload_conf();
\\endif
"""


def serve(settings: Settings, material: tuple[str, str] | None, check: bool = True) -> None:
    """Make the stack's PostgreSQL serve `material` (chain, key), and wait until new
    connections get it; None: serve its own certificate again (if ours is set)."""
    container = container_of(settings, settings.app.postgres.service)
    env = settings.docker_env()
    if material is None:
        runner.run(
            psql_cmd(container, settings),
            input=UNSERVE_SQL,
            env=env,
            check=check,
            what="giving the database its own certificate back",
        )
        runner.run(
            ["docker", "exec", container, "sh", "-c", SERVE_SCRIPT, "relay-cert", "off"],
            env=env,
            check=False,
        )
        return
    chain, key = material
    runner.run(
        ["docker", "exec", "-i", container, "sh", "-c", SERVE_SCRIPT, "relay-cert", "on", chain],
        input=key,
        env=env,
        what="giving the database the relay's certificate",
    )
    runner.run(
        psql_cmd(container, settings),
        input=SERVE_SQL,
        env=env,
        what="naming the relay's certificate",
    )
    deadline = time.monotonic() + 5
    # the reload is a signal: a session started after it has been handled sees the new setting
    while True:
        shown = runner.run(
            psql_cmd(container, settings),
            input="SHOW ssl_cert_file;",
            env=env,
            what="reading ssl_cert_file",
        ).stdout.strip()
        if shown == CERT_FILES[0]:
            return
        if time.monotonic() > deadline:
            raise MoveError(
                f"the database does not take the relay's certificate (ssl_cert_file stays {shown!r}; set on its "
                "command line?): leave ssl_cert_file to postgresql.conf, or set COLORGATE_MOVE_RELAY_SSLMODE=require"
            )
        time.sleep(0.1)


def check(settings: Settings, network: str = "host") -> None:
    """Before a replicate move changes anything: who can reach the relay (exposure)."""
    runner.say(exposure(settings, firewall(settings, "check", network)))


def exposure(settings: Settings, guarded: bool) -> str:
    """Who may reach the relay, as a line to show; refused (MoveError) when nobody may
    or anybody may: on a host whose firewall (server-setup.sh, `guarded`) drops
    published ports, the allow-list must name who may; without it, a relay on a public
    address (or every address) is refused unless COLORGATE_MOVE_RELAY_FIREWALL=none."""
    port = settings.move_relay_port
    if guarded:
        if not settings.move_relay_allow:
            raise MoveError(
                "this host's firewall (server-setup.sh) lets nobody reach the replication relay: set "
                "COLORGATE_MOVE_RELAY_ALLOW to the addresses the managed database connects from (its provider lists them)"
            )
        return f"   relay port {port}: the host firewall lets in {', '.join(settings.move_relay_allow)} only"
    bind = ipaddress.ip_address(settings.move_relay_bind)
    public = bind.is_unspecified or bind.is_global
    if public and settings.move_relay_firewall != "none":
        raise MoveError(
            f"the replication relay would listen on {bind}:{port}, reachable by any address, and this host has no "
            "Colorgate firewall to keep it to COLORGATE_MOVE_RELAY_ALLOW: run compose/scripts/server-setup.sh on it, "
            "or bind the relay to a private address (COLORGATE_MOVE_RELAY_BIND), or set COLORGATE_MOVE_RELAY_FIREWALL=none"
        )
    reach = "any address reaches it" if public else f"it listens on {bind} only"
    return (
        f"   relay port {port}: no Colorgate firewall on this host (server-setup.sh), {reach}; "
        "the database admits only the move role over TLS through it"
    )


def firewall(settings: Settings, op: str, network: str = "host") -> bool:
    """Open (`open`) or close (`close`) the relay's port in the host firewall for the
    allow-list, or only look (`check`); True when the host has Colorgate's firewall.
    Runs nft in a one-off dbtools container on the target's engine with its host
    network (`network`: another namespace, for tests) and NET_ADMIN alone."""
    nets = settings.move_relay_allow if op != "check" else ()
    proc = runner.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            network,
            "--user",
            "0",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--label",
            f"com.docker.compose.project={settings.project}",
            "--entrypoint",
            "sh",
            f"{settings.image_prefix}dbtools:latest",
            "-c",
            FIREWALL_SCRIPT,
            "relay-firewall",
            op,
            str(settings.move_relay_port),
            *nets,
        ],
        env=settings.docker_env(),
        check=op != "close",
        what="setting the host firewall for the relay",
    )
    return proc.stdout.strip().endswith("present")


def start(settings: Settings, network: str = "host") -> None:
    """Start the relay closed (launch), then open it (admit)."""
    launch(settings)
    admit(settings, network)


def admit(settings: Settings, network: str = "host") -> None:
    """Write the database's rules for the launched relay, open it, then the host firewall."""
    found = addresses(settings)
    if not found:
        remove(settings, network)
        raise ColorgateError(
            "the replication relay shares no network with the database: see `invoke render`"
        )
    _hba(settings, found)
    runner.run(
        [
            "docker",
            "exec",
            container(settings),
            "sh",
            "-c",
            OPEN_SCRIPT,
            "relay-open",
            render.RELAY_OPEN,
        ],
        env=settings.docker_env(),
        what="opening the replication relay",
    )
    firewall(settings, "open", network)


def launch(settings: Settings) -> None:
    """The relay's container, published but closed: it forwards nothing until opened
    (render.RELAY_SCRIPT), so nobody reaches the database through it before its rules
    for the relay's address are written (its address is known only once it runs)."""
    if bootstrap.local_engine(settings):
        bootstrap.check_port_free(
            settings,
            settings.move_relay_bind,
            settings.move_relay_port,
            "COLORGATE_MOVE_RELAY_PORT",
        )
    runner.run(
        compose.compose_cmd(
            settings, *compose.ALL_PROFILES, "up", "--detach", "--no-deps", "--no-build", SERVICE
        ),
        env=compose.compose_env(settings, {}),
        what="starting the replication relay (closed)",
    )


def remove(settings: Settings, network: str = "host") -> None:
    """Remove the relay and what it opened (best effort: the database may be down or
    retired, the firewall's elements may have expired)."""
    firewall(settings, "close", network)
    serve(settings, None, check=False)
    _hba(settings, [], check=False)
    runner.run(
        compose.compose_cmd(settings, *compose.ALL_PROFILES, "rm", "--stop", "--force", SERVICE),
        env=compose.compose_env(settings, {}),
        check=False,
        what="removing the replication relay",
    )


def container(settings: Settings) -> str:
    """The relay's container: compose's, on a Swarm too (a one-off container on the
    manager, beside the database, on the stack's overlay network; not a service)."""
    return f"{settings.project}-{SERVICE}-1"


def left(settings: Settings, states: dict) -> bool:
    """Whether a relay exists (facts.service_states lists it on one host only)."""
    return targets.of(settings).one_off_exists(settings, states, SERVICE, container(settings))


def addresses(settings: Settings) -> list[str]:
    """The relay's addresses on the networks it shares with the database: where
    PostgreSQL sees its connections come from."""
    pg = settings.app.postgres
    names = [container(settings), container_of(settings, pg.service)]
    relay_nets, db_nets = (
        ((inspect_container(settings, n).get("NetworkSettings") or {}).get("Networks") or {})
        for n in names
    )
    return sorted(
        {
            net["IPAddress"]
            for name, net in relay_nets.items()
            if name in db_nets and net.get("IPAddress")
        }
    )


def _hba(settings: Settings, found: list[str], check: bool = True) -> None:
    container = container_of(settings, settings.app.postgres.service)
    runner.run(
        ["docker", "exec", container, "sh", "-c", HBA_SCRIPT, "relay-hba", *found],
        env=settings.docker_env(),
        check=check,
        what="writing the database's rules for the relay",
    )
    runner.run(
        psql_cmd(container, settings),
        input="SELECT pg_reload_conf();",
        env=settings.docker_env(),
        check=check,
        what="reloading the database's client rules",
    )
