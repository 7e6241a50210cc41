"""The compose file rendered for a Swarm (`docker stack deploy` reads it): variables filled
in (a stack file has no .env), replicas per color, ports in host mode, health checks,
secrets and networks as a Swarm takes them; and the copy one-off containers run from."""

from __future__ import annotations

import copy
import re

from deploy.contract import (
    App,
)
from deploy.errors import ContractError
from deploy.render import compose

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


SWARM_HEALTH_INTERVAL = "10s"


EDGE_SWARM_HEALTHCHECK = {
    "test": ["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"],
    "interval": SWARM_HEALTH_INTERVAL,
    "timeout": "3s",
    "retries": 3,
    "start_period": "20s",
}


SWARM_DROPPED = (
    "build",
    "restart",
    "profiles",
    "pids_limit",
    "mem_limit",
    "depends_on",
    "container_name",
    "network_mode",
)


def interpolate(value, env: dict[str, str]):
    """${VAR} and ${VAR:-default} in every string of `value`, from `env` (compose's rules)."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: env.get(m[1]) or (m[2] or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def host_ports(ports: list, where: str) -> list[dict]:
    """Published ports in Swarm's host mode (no routing mesh: it needs IPVS): the edge
    answers on the node it runs on. Each of Compose's forms (`[ADDRESS:]PUBLISHED:TARGET`,
    a `/udp` suffix, ranges, the long syntax) -> the long syntax. Swarm publishes on every
    address of its node: a port bound to loopback there (meant to stay private: the edge
    with COLORGATE_BIND=127.0.0.1, say) is refused, not made public."""
    out = []
    for i, port in enumerate(ports):
        if isinstance(port, dict):
            address, published, target, protocol = (
                port.get("host_ip", ""),
                str(port.get("published", "")),
                str(port.get("target", "")),
                port.get("protocol", "tcp"),
            )
        else:
            spec, _, protocol = str(port).partition("/")
            address = ""
            if spec.startswith("["):  # [IPv6]:PUBLISHED:TARGET
                address, _, spec = spec[1:].partition("]:")
            parts = spec.split(":")
            if len(parts) == 3:
                address, parts = parts[0], parts[1:]
            published, target = parts if len(parts) == 2 else ("", parts[0])
        if address.startswith("127.") or address in ("::1", "localhost"):
            raise ContractError(
                f"{where}[{i}]: {port!r} is bound to loopback, which a Swarm cannot do (it publishes on every "
                "address of the node): for the edge set COLORGATE_BIND to the node's address or 0.0.0.0"
            )
        try:
            targets, publisheds = _port_range(target), _port_range(published) if published else []
        except ValueError:
            raise ContractError(
                f"{where}[{i}]: {port!r} is not a port, a range or PUBLISHED:TARGET"
            ) from None
        if publisheds and len(publisheds) != len(targets):
            raise ContractError(
                f"{where}[{i}]: {port!r} maps {len(publisheds)} ports to {len(targets)}: give ranges of one length"
            )
        for n, target_port in enumerate(targets):
            out.append(
                {
                    "target": target_port,
                    **({"published": publisheds[n]} if publisheds else {}),
                    "protocol": protocol or "tcp",
                    "mode": "host",
                }
            )
    return out


def _port_range(text: str) -> list[int]:
    first, _, last = text.strip().partition("-")
    low, high = int(first), int(last or first)
    if not 1 <= low <= high <= 65535:
        raise ValueError(text)
    return list(range(low, high + 1))


def render(
    app: App,
    env: dict[str, str],
    replicas: dict[str, int] | None = None,
    copies: dict[str, int] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    node: str = "",
    encrypted: bool = True,
) -> dict:
    """The stack `docker stack deploy` runs on a Swarm, from the same rendering as the
    compose file (`compose`), its variables filled in from `env`: every colored copy a
    service of `copies[copy]` tasks, else `replicas[name]` (default: the contract's, else 1) reached by name (dnsrr: a name resolves
    to its tasks' addresses, which the edge resolves per request; Swarm's virtual IPs
    need IPVS), shared services and the edge on the manager (their volumes are there;
    one task each, or `copies[name]`: 0 for a database db.retire-local retired;
    the edge publishes its ports in host mode there), overlay networks that one-off
    containers may join. Colorgate's tools (profiles) are not services. A volume of
    secret files (access.secret_files) named in `secrets` (volume -> file -> the Swarm
    secret holding it) becomes those secrets, at the same paths: a volume is one node's.
    `node` (an id) pins the shared services and the edge to that manager rather than any.
    Its overlay networks are `encrypted` (IPsec between nodes; Docker makes a network
    once, so one made before keeps its options)."""
    rendered = interpolate(compose(app), env)
    services, used = {}, {}
    for name, svc in rendered["services"].items():
        if svc.get("profiles") or svc.get("network_mode"):
            continue
        deploy = _deploy(app, name, svc, replicas, copies, node)
        svc = {k: v for k, v in svc.items() if k not in SWARM_DROPPED}
        if svc.get("ports"):
            svc["ports"] = host_ports(svc["ports"], f"services.{name}.ports")
        _mounts(svc, secrets or {}, used)
        _healthcheck(name, svc)
        svc["deploy"] = deploy
        services[name] = svc
    volumes = {v: spec for v, spec in rendered["volumes"].items() if v not in (secrets or {})}
    return {
        "version": "3.8",
        "services": services,
        "networks": _networks(rendered, services, encrypted),
        "volumes": volumes,
        **({"secrets": used} if used else {}),
    }


def _deploy(app: App, name: str, svc: dict, replicas, copies, node: str) -> dict:
    """A service's `deploy`: a colored copy's replicas, or one task of a shared service
    (or the edge) placed on the manager; its memory limit the service's own, else the
    settings' (filled in by `compose`)."""
    memory = svc.get("mem_limit") or "1g"
    deploy = {"endpoint_mode": "dnsrr", "resources": {"limits": {"memory": memory}}}
    copy_of = app.split_copy(name)
    if copy_of:
        default = (replicas if replicas is not None else app.replicas).get(copy_of[0], 1)
        deploy["replicas"] = (copies or {}).get(name, default)
    else:
        where = f"node.id == {node}" if node else "node.role == manager"
        deploy.update(replicas=(copies or {}).get(name, 1), placement={"constraints": [where]})
    return deploy


def _mounts(svc: dict, secrets: dict[str, dict[str, str]], used: dict) -> None:
    """tmpfs as mounts (Swarm ignores a service's tmpfs key), and a volume of secret files
    as those Swarm secrets at the same paths (adding each to `used`)."""
    if svc.get("tmpfs"):
        tmpfs = svc.pop("tmpfs")
        svc["volumes"] = [
            *(svc.get("volumes") or []),
            *(
                {"type": "tmpfs", "target": str(t).split(":", 1)[0]}
                for t in ([tmpfs] if isinstance(tmpfs, str) else tmpfs)
            ),
        ]
    for mount in list(svc.get("volumes") or []):
        volume, _, rest = str(mount).partition(":") if isinstance(mount, str) else ("", "", "")
        if volume not in secrets:
            continue
        svc["volumes"].remove(mount)
        path = rest.split(":", 1)[0]
        svc["secrets"] = [
            *(svc.get("secrets") or []),
            *(
                {"source": secret, "target": f"{path}/{file}", "mode": 0o444}
                for file, secret in sorted(secrets[volume].items())
            ),
        ]
        used.update({secret: {"external": True} for secret in secrets[volume].values()})


def _healthcheck(name: str, svc: dict) -> None:
    """Swarm counts a task as running once healthy: checked every 10 s (not the images'
    300 s, which keeps one host idle: a release there runs the check itself), the image's
    own check unless the service says another."""
    if name == "edge":
        svc["healthcheck"] = EDGE_SWARM_HEALTHCHECK
    elif not (svc.get("healthcheck") or {}).get("disable"):
        svc["healthcheck"] = {**(svc.get("healthcheck") or {}), "interval": SWARM_HEALTH_INTERVAL}


def _networks(rendered: dict, services: dict, encrypted: bool) -> dict:
    """Every network as an attachable overlay (one-off containers join them), encrypted
    unless not `encrypted`; `default` too when a service is on it."""
    overlay = {
        "driver": "overlay",
        "attachable": True,
        **({"driver_opts": {"encrypted": ""}} if encrypted else {}),
    }
    networks = {
        name: {**{k: v for k, v in (net or {}).items() if k in ("internal", "labels")}, **overlay}
        for name, net in rendered["networks"].items()
    }
    if any("default" in (svc.get("networks") or {}) for svc in services.values()):
        networks.setdefault("default", dict(overlay))
    return networks


def one_offs_on_swarm(rendered: dict, project: str) -> dict:
    """The compose file for one-off containers (`compose run`: migrations, database
    tools) on a Swarm manager: on the stack's networks (overlay, attachable) and its
    volumes there, as they are, instead of compose's own."""
    out = copy.deepcopy(rendered)
    out["networks"] = {
        n: {"external": True, "name": f"{project}_{n}"} for n in rendered["networks"]
    }
    if any(
        not svc.get("network_mode") and ("default" in (svc.get("networks") or {"default": None}))
        for svc in rendered["services"].values()
    ):
        out["networks"]["default"] = {"external": True, "name": f"{project}_default"}
    out["volumes"] = {v: {"external": True, "name": f"{project}_{v}"} for v in rendered["volumes"]}
    return out
