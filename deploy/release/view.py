"""A running stack as its gates see it: one object over what the engine reads of it (the
target's facts, sockets, database roles, confinement), what its edge says (the live color,
the canary, the lock, the database record), its TLS handshake and its probes. The gates'
steps (steps/) ask a StackView and nothing else of the engine, whichever target the stack
runs on."""

from __future__ import annotations

import ssl

import httpx

from deploy import edge, render
from deploy.config import Settings
from deploy.edge import probes
from deploy.release import canary, gates
from deploy.target import confinement, dbfacts, facts, sockets, targets


class StackView:
    """The stack of `settings`, read when asked (nothing is cached here but the target)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = settings.app
        self._target = targets.of(settings)

    # --- the edge -------------------------------------------------------------------------

    def live(self) -> edge.Active | None:
        """The color (and version) the edge routes to; None when none is live."""
        return edge.read_active(self.settings)

    def canary(self) -> dict | None:
        """The canary beside the live color, while one runs."""
        return canary.read(self.settings)

    def lock_command(self) -> str:
        """The command holding the release lock ("" when none does)."""
        return edge.read_lock_holder(self.settings).get("command", "")

    def database_retired(self) -> bool:
        """Whether the stack's own database was retired after a move to a managed one."""
        return bool(edge.read_database_record(self.settings).get("retired"))

    def trust(self) -> str | None:
        """The CA bundle the gates verify the edge against."""
        return gates.trust_pem(self.settings)

    def client(self, trust: str | None, color: str) -> httpx.Client:
        """An HTTPS client of the public edge, as a gate of `color`."""
        return gates.edge_client(self.settings, trust, gate=True, color=color)

    def handshake(self, trust: str | None, version: ssl.TLSVersion | None = None):
        """A TLS handshake with the edge at its domain (only `version`, when given)."""
        s = self.settings
        return gates.tls_handshake(s.edge_address, s.https_port, s.domain, trust, version)

    def probe(self, service: str, color: str, path: str) -> probes.Probe:
        """`path` asked of `color`'s copy of `service` from inside the edge."""
        return probes.probe_from_edge(self.settings, service, color, path)

    def candidate_health(self, color: str) -> dict[str, str | None]:
        """Each routed service of `color` against its health check: service -> problem."""
        return probes.candidate_health(self.settings, color)

    health_problem = staticmethod(probes.health_problem)

    # --- what runs ------------------------------------------------------------------------

    def states(self) -> dict[str, facts.ServiceState]:
        """Every service of the stack (a container, or a Swarm's service) and its state."""
        return facts.service_states(self.settings)

    def running_versions(self) -> dict[str, str]:
        """The version each color runs."""
        return facts.running_versions(self.states())

    @property
    def restarts_in_place(self) -> bool:
        """Whether a crashing container restarts in place (one host), its restarts counted;
        a Swarm replaces the task instead."""
        return self._target.restarts_in_place

    def spread_problems(self, names: list[str]) -> dict[str, str]:
        """The services of `names` on fewer nodes than they could run on."""
        return self._target.spread_problems(self.settings, names)

    def addresses(self, color: str) -> dict[str, str]:
        """Address -> the service of `color` (or shared) behind it."""
        return self._target.addresses(self.settings, color)

    def confinements(self, services: list[str]) -> dict[str, confinement.Confinement]:
        """How each running service of `services` is confined."""
        return self._target.confinements(self.settings, services)

    def declared_capabilities(self, services: list[str]) -> dict[str, set[str]]:
        """The capabilities the rendered compose file adds to each of `services` (the
        app's own cap_add, or Colorgate's default for it)."""
        rendered = render.compose(self.app)["services"]
        return {
            name: set(map(confinement.capability, (rendered.get(name) or {}).get("cap_add") or ()))
            for name in services
        }

    def pending_migrations(self, color: str) -> bool | None:
        """Whether `color` has migrations the database lacks (None: no status command)."""
        return dbfacts.pending_migrations(self.settings, color)

    def database_roles(self) -> dbfacts.DatabaseRoles:
        """The app's role, the database's owner and who is connected as what."""
        return dbfacts.database_roles(self.settings)

    # --- the host's sockets ---------------------------------------------------------------

    postgres_port = sockets.POSTGRES_PORT

    def published_ports(self) -> dict[str, list[str]]:
        """The host ports each service publishes."""
        return sockets.published_ports(self.settings)

    def networks(self, service: str) -> list[sockets.Network]:
        """The networks `service` is attached to."""
        return sockets.service_networks(self.settings, service)

    def listening_on(self, port: int) -> list[str]:
        """What listens on `port` of the target's host."""
        return sockets.listening_on_port(self.settings, port)

    def host_addresses(self) -> set[str]:
        """The addresses a port published by the stack would answer on: loopback, the
        edge's, and every node's on a Swarm."""
        return {
            "127.0.0.1",
            self.settings.edge_address,
            *self._target.node_addresses(self.settings),
        }

    def connects(self, address: str, port: int) -> bool:
        """Whether a TCP connection to `address`:`port` succeeds from the host."""
        return sockets.tcp_connects(address, port)
