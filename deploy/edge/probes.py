"""The app's answers as the edge sees them: a request from inside the edge container
to a color's service (the way nginx reaches it after a switch: same network, same
DNS), and what the contract's health checks expect of an answer. Parsing and judging
are pure (tested on captured output)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from deploy import contract, edge
from deploy.config import Settings


@dataclass(frozen=True)
class Probe:
    """An HTTP answer as the edge sees it from a container on its network."""

    url: str
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self):
        return json.loads(self.text)


def edge_probe_cmd(url: str) -> list[str]:
    """What the edge container runs to ask `url` (in the shell kept open there)."""
    return ["curl", "-sS", "-i", "--max-time", "5", url]


def parse_curl_i(url: str, out: str) -> Probe:
    """`curl -i` output (status line, headers, blank line, body) -> Probe."""
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Probe(url, status, headers, body)


def probe_from_edge(
    settings: Settings, service: str, color: str, path: str, port: int | None = None
) -> Probe:
    """GET http://<service>_<color>:<port><path> from inside the edge container, the
    way nginx will reach it after a switch (same network, same DNS). The port is the
    service's route's unless given."""
    port = port or settings.app.port_of(service)
    url = f"http://{settings.app.copy_name(service, color)}:{port}{path}"
    proc = edge.in_edge(settings, edge_probe_cmd(url), check=False)
    if proc.returncode != 0:
        return Probe(url, 0, {}, (proc.stderr or proc.stdout).strip())
    return parse_curl_i(url, proc.stdout)


def health_problem(check: contract.Health, status_code: int, text: str) -> str | None:
    """What is wrong with an answer to a health check (None: healthy), from the
    contract's expectations: status, JSON fields, body text."""
    shown = f"answered {status_code}: {text[:200]!r}"
    if status_code != check.status:
        return f"expected status {check.status}, {shown}"
    if check.json:
        try:
            body = json.loads(text)
        except ValueError:
            return f"expected a JSON body, {shown}"
        for key, value in check.json:
            got = body.get(key) if isinstance(body, dict) else None
            got = str(got).lower() if isinstance(got, bool) else got
            if str(got) != value:
                return f"JSON field {key!r} is {got!r}, expected {value!r}: {shown}"
    if check.contains and check.contains not in text:
        return f"the body does not contain {check.contains!r}: {shown}"
    return None


def candidate_health(settings: Settings, color: str) -> dict[str, str | None]:
    """Each routed service of `color` against its health check: service -> problem or None."""
    out = {}
    for service, check in settings.app.health.items():
        probe = probe_from_edge(settings, service, color, check.path, check.port)
        out[service] = (
            health_problem(check, probe.status_code, probe.text)
            if probe.status_code
            else f"no answer: {probe.text}"
        )
    return out
