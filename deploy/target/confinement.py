"""How each container of the stack is confined: the user it runs as, its capabilities,
no-new-privileges, a read-only root filesystem, and which variables of its environment
hold a secret of the settings (the hardening gates judge them). Read from `docker
inspect` on one engine, from each service's spec on a Swarm (deploy.target.targets reads them);
turned into a Confinement by pure functions."""

from __future__ import annotations

import time
from dataclasses import dataclass

from deploy.config import Settings
from deploy.errors import CommandError, NotFound
from deploy.target import connections, facts, runner


@dataclass(frozen=True)
class Confinement:
    """How a running container is confined, from `docker inspect`."""

    service: str
    user: str  # the user it runs as ("" : the image's default, root)
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    read_only: bool
    secret_env: tuple[
        str, ...
    ] = ()  # variables of its environment that hold a secret of the settings

    @property
    def as_root(self) -> bool:
        return self.user.split(":")[0] in ("", "root", "0")

    @property
    def no_new_privileges(self) -> bool:
        """As the engine applies it: the last no-new-privileges option wins."""
        said = [o.replace("=", ":") for o in self.security_opt if o.startswith("no-new-privileges")]
        return bool(said) and said[-1] in ("no-new-privileges", "no-new-privileges:true")

    def gains(self) -> list[str]:
        """What lets it gain privileges: capabilities kept or added, no no-new-privileges."""
        return (
            ([f"capabilities added: {', '.join(self.cap_add)}"] if self.cap_add else [])
            + ([] if "ALL" in self.cap_drop else ["capabilities not dropped (cap_drop: [ALL])"])
            + ([] if self.no_new_privileges else ["no-new-privileges off"])
        )

    def problems(self) -> list[str]:
        """All that a locked-down container must not have: the gains, root, a writable root filesystem."""
        return (
            self.gains()
            + (["runs as root"] if self.as_root else [])
            + ([] if self.read_only else ["root filesystem writable"])
        )


def of_container(name: str, inspected: dict) -> Confinement:
    """A container's confinement, from `docker inspect` (pure)."""
    host, config = inspected.get("HostConfig") or {}, inspected.get("Config") or {}
    return Confinement(
        name,
        config.get("User") or "",
        tuple(map(capability, host.get("CapAdd") or ())),
        tuple(map(capability, host.get("CapDrop") or ())),
        tuple(host.get("SecurityOpt") or ()),
        bool(host.get("ReadonlyRootfs")),
        tuple(
            k
            for k, _, v in (e.partition("=") for e in config.get("Env") or ())
            if runner.holds_secret(v)
        ),
    )


def of_service(name: str, spec: dict, user: str, locked: bool) -> Confinement:
    """A Swarm service's, from its container spec (pure): `user` as its tasks run (the
    spec's, else its image's), `locked`: whether the engines set
    no-new-privileges for every container (Swarm has none per service: API 1.41)."""
    return Confinement(
        name,
        user,
        tuple(map(capability, spec.get("CapabilityAdd") or ())),
        tuple(map(capability, spec.get("CapabilityDrop") or ())),
        ("no-new-privileges:true",) if locked else (),
        bool(spec.get("ReadOnly")),
        tuple(
            k
            for k, _, v in (e.partition("=") for e in spec.get("Env") or ())
            if runner.holds_secret(v)
        ),
    )


def no_new_privs(settings: Settings, service: str) -> bool:
    """Whether `service`'s process runs with no_new_privs: its task's now, asked for 3 s while unreadable (a Swarm's read "off")."""
    for attempt in range(10):
        if attempt:
            time.sleep(0.3)
        try:
            created = connections.engine(
                settings.docker_host,
                "exec_create",
                facts.container(settings, service, fresh=True),
                ["cat", "/proc/1/status"],
            )
            out = connections.engine(settings.docker_host, "exec_start", created["Id"])
            said = [
                line.split()
                for line in (
                    out.decode(errors="replace") if isinstance(out, bytes) else out
                ).splitlines()
                if line.startswith("NoNewPrivs:")
            ]
            if said:
                return said[0] == ["NoNewPrivs:", "1"]
        except CommandError:
            pass
    return False


def image_user(settings: Settings, image: str) -> str:
    try:
        return (
            (
                connections.engine(
                    settings.docker_host, "inspect_image", image.split("@", 1)[0]
                ).get("Config")
                or {}
            ).get("User")
        ) or ""
    except NotFound:
        return ""


def capability(name: str) -> str:
    """A capability as compose files name it (the engine says CAP_NET_RAW, compose NET_RAW)."""
    return str(name).upper().removeprefix("CAP_")
