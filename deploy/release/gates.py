"""The gates' side of the engine: the HTTPS client that speaks to the edge as the
public domain (a gate's carries the edge's gate token), the TLS handshake the TLS gate
reads, and running the gate features (pytest-bdd in a forked process, its JUnit report
read back as scenarios). The steps in steps/ call these and deploy.target.facts; each returns
plain data, so a failed gate can say what it saw."""

from __future__ import annotations

import importlib
import os
import socket
import ssl
import sys
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from deploy import config, edge
from deploy.config import Settings
from deploy.edge import tls
from deploy.target import connections, runner


class EdgeClient(httpx.Client):
    """An HTTPS client that connects to the edge's address and speaks to it as the
    public domain (SNI, certificate name and Host), so the domain need not resolve
    from where the gates run."""

    def __init__(self, server_name: str, **kwargs):
        super().__init__(**kwargs)
        self.headers["Host"] = server_name
        self._server_name = server_name

    def build_request(self, *args, **kwargs) -> httpx.Request:
        request = super().build_request(*args, **kwargs)
        request.extensions["sni_hostname"] = self._server_name
        return request


def edge_client(
    settings: Settings, ca_pem: str | None = None, gate: bool = False, color: str = ""
) -> httpx.Client:
    """HTTPS client for the public edge, verifying its certificate against `ca_pem`
    (the edge's local CA by default) and the configured domain. A `gate` client sends
    the gates' token (read from the edge once): it passes maintenance mode and a write
    freeze, is exempt from the per-client limits, is told which container answered,
    and, during a canary, is served by `color` (the color under test)."""
    ca_pem = ca_pem if ca_pem is not None else tls.read_local_ca(settings)
    port = "" if settings.https_port == 443 else f":{settings.https_port}"
    headers = {}
    token = edge.read_gate_token(settings) if gate else ""
    if token:
        headers["X-Colorgate-Gate"] = token
        if color:
            headers["X-Colorgate-Serve"] = color
    return EdgeClient(
        settings.domain,
        headers=headers,
        base_url=f"https://{settings.edge_address}{port}",
        verify=tls.client_context(ca_pem),
        timeout=10,
        follow_redirects=False,
        trust_env=False,
    )


# --- TLS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    ok: bool
    error: str
    protocol: str
    not_after: float  # seconds since the epoch, 0 when unknown
    subject_alt_names: list[str]


def trust_pem(settings: Settings) -> str | None:
    """PEM the TLS gate trusts: the edge's local CA, a bundle file, or None (system)."""
    if settings.tls_ca == "local":
        return tls.read_local_ca(settings)
    if settings.tls_ca == "system":
        return None
    with open(settings.tls_ca) as f:
        return f.read()


def tls_handshake(
    host: str,
    port: int,
    server_name: str,
    ca_pem: str | None,
    version: ssl.TLSVersion | None = None,
) -> Handshake:
    """Handshake with full verification (chain to `ca_pem`, name `server_name`).

    With `version`, probe whether the server accepts that protocol: the client offers
    only it (old ciphers allowed) and does not verify, so `ok` means "accepted"."""
    ctx = tls.client_context(ca_pem)
    if version is not None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            # TLS 1.0/1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as s,
        ):
            cert = s.getpeercert() or {}
            sans = [
                value
                for kind, value in cert.get("subjectAltName", ())
                if kind in ("DNS", "IP Address")
            ]
            not_after = ssl.cert_time_to_seconds(cert["notAfter"]) if "notAfter" in cert else 0.0
            return Handshake(True, "", s.version() or "", not_after, sans)
    except ssl.SSLCertVerificationError as exc:
        return Handshake(False, exc.verify_message or str(exc), "", 0.0, [])
    except (ssl.SSLError, OSError) as exc:
        return Handshake(False, str(exc), "", 0.0, [])


# --- running the gates -------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    feature: str
    name: str
    outcome: str  # passed, failed, skipped
    step: str
    message: str
    duration_s: float


@dataclass
class GateRun:
    phase: str
    color: str
    version: str
    returncode: int
    scenarios: list[Scenario]
    report: Path
    output: str

    @property
    def passed(self) -> bool:
        return (
            self.returncode == 0
            and bool(self.scenarios)
            and all(s.outcome != "failed" for s in self.scenarios)
        )

    def first_failure(self) -> str:
        for s in self.scenarios:
            if s.outcome == "failed":
                step = f" at step '{s.step}'" if s.step else ""
                return f"scenario '{s.name}'{step}: {s.message}"
        if not self.scenarios:
            tail = self.output.strip().splitlines()[-1:] or ["no output"]
            return f"no gate scenario ran ({tail[0]})"
        return f"pytest exited {self.returncode}"

    def summary_lines(self) -> list[str]:
        marks = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
        lines = []
        for s in self.scenarios:
            line = f"   {marks.get(s.outcome, s.outcome.upper())}  {s.feature}: {s.name} ({s.duration_s:.2f}s)"
            if s.outcome == "failed":
                line += f"\n         step: {s.step or '?'}\n         why:  {s.message}"
            lines.append(line)
        lines.append(f"   report: {self.report}")
        return lines


def gate_args(settings: Settings, phase: str, color: str, version: str, report: Path) -> list[str]:
    return [
        # the built-in gates, which collect the app's own too
        str(config.shipped("colorgate_gates")),
        "-m",
        phase,
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(config.shipped("colorgate_gates")),
        f"--profile={settings.profile}",
        f"--target-color={color}",
        f"--target-version={version}",
        f"--junitxml={report}",
        "-o",
        "junit_family=xunit1",
    ]


def gate_cmd(settings: Settings, phase: str, color: str, version: str, report: Path) -> list[str]:
    """The gates as a process of their own (where this process cannot fork)."""
    return [sys.executable, "-m", "pytest", *gate_args(settings, phase, color, version, report)]


# The gates' pytest plugin (steps/, its entry point "colorgate"), named as pytest's `-p`
# names it: the engine runs the gates and never imports the steps' code itself.
GATE_PLUGIN = "steps.plugin"


def _warm() -> None:
    """Load what every gate run needs once, in this process, before forking: pytest, its
    JUnit report, pytest-bdd, the Engine API client and testinfra the steps read the
    target with, and the gates' plugin by its name, with the step library it brings."""
    for name in ("_pytest.junitxml", "pytest", "pytest_bdd.plugin", "docker", "testinfra"):
        importlib.import_module(name)
    for name in getattr(importlib.import_module(GATE_PLUGIN), "pytest_plugins", ()):
        importlib.import_module(name)


def _pytest_in_fork(args: list[str]) -> int:
    """pytest in the forked child: only the plugins the gates use (no entry-point scan)."""
    import pytest

    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return int(pytest.main([*args, "-p", "pytest_bdd.plugin", "-p", GATE_PLUGIN]))


def parse_junit(xml_text: str) -> list[Scenario]:
    """Scenario results from a gate run's JUnit XML (properties set by conftest.py)."""
    root = ET.fromstring(xml_text)
    out = []
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        outcome = (
            "failed" if failure is not None else "skipped" if skipped is not None else "passed"
        )
        message = ""
        if failure is not None:
            message = (
                (failure.get("message") or "").strip().splitlines()[0]
                if failure.get("message")
                else "failed"
            )
        out.append(
            Scenario(
                feature=props.get("feature", case.get("classname", "")),
                name=props.get("scenario", case.get("name", "")),
                outcome=outcome,
                step=props.get("failed_step", ""),
                message=runner.redact(message),
                duration_s=float(case.get("time") or 0),
            )
        )
    return out


def redact_report(report: Path) -> str:
    """Rewrite a gate report without any secret this run knows (a failure message or
    captured output may quote one; CI uploads the reports); returns its text."""
    text = report.read_text()
    clean = runner.redact(text)
    if clean != text:
        report.write_text(clean)
    return clean


def run_gates(settings: Settings, phase: str, color: str, version: str) -> GateRun:
    """Run the `phase` (pre/post) scenarios against `color` at `version`."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    report = settings.reports_dir / f"gates-{stamp}-{phase}-{color}.xml"
    if hasattr(os, "fork"):
        # a warm runner: pytest, its plugins and the steps' imports are already loaded here
        _warm()
        args = gate_args(settings, phase, color, version, report)
        proc = connections.forked(
            lambda: _pytest_in_fork(args),
            env=settings.as_environment(),
            timeout=600,
            what=f"{phase} gates",
        )
    else:
        proc = runner.run(
            gate_cmd(settings, phase, color, version, report),
            env=settings.as_environment(),
            check=False,
            timeout=600,
            what=f"{phase} gates",
        )
    scenarios = parse_junit(redact_report(report)) if report.is_file() else []
    return GateRun(
        phase, color, version, proc.returncode, scenarios, report, proc.stdout + proc.stderr
    )
