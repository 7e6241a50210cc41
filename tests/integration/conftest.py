"""A real stack on the real Docker engine, isolated per test run: its own compose
project name, its own free ports and its own image names; removed (containers,
networks, volumes, image tags) when the run ends, even when it fails."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import tenacity

from deploy import config, edge, profiles, stack, starting, views
from deploy.edge import locking, tls
from deploy.release import gates
from deploy.target import compose, runner
from tests.certs import make_ca, make_leaf

INVOKE = str(Path(sys.executable).with_name("invoke"))


# The longest modules first, as the "time per module" summary below measures them (a
# Swarm of engines each, then those with several stacks or long waits under load):
# `-n 4 --dist loadfile --no-loadscope-reorder` hands modules out in this order (xdist's
# default reorder puts the modules with most tests first, which left the Swarm ones,
# with few, running alone at the end), so the short ones fill the other processes meanwhile.
LONGEST = (
    "test_swarm_target.py",
    "test_release.py",
    "test_crash_move.py",
    "test_crash.py",
    "test_move.py",
    "test_db.py",
    "test_swarm_move.py",
    "test_installed.py",
    "test_benchmark.py",
    "test_pg_versions.py",
    "test_mlflow.py",
    "test_registry.py",
    "test_acme.py",
    "test_swarm_cluster.py",
)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
    rank = {name: n for n, name in enumerate(LONGEST)}
    # stable: in-module order kept
    items.sort(key=lambda item: rank.get(Path(item.fspath).name, len(LONGEST)))


def pytest_terminal_summary(terminalreporter):
    """Each module's time (setup, calls, teardown), longest first: what LONGEST's order
    is made from (the suite's wall time is the busiest process's sum)."""
    spent: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) and getattr(report, "nodeid", ""):
                module = report.nodeid.split("::")[0]
                spent[module] = spent.get(module, 0.0) + getattr(report, "duration", 0.0)
    if spent:
        terminalreporter.write_sep("=", "time per module")
        for module, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:25]:
            terminalreporter.write_line(f"{seconds:8.1f}s {module}")


# Ports for the stacks, test CAs and forwarders a test process starts: each pytest-xdist
# process has a range of its own below the kernel's ephemeral ones (32768 and up, which
# clients' connections use) and hands each port out once. The kernel's "any free port"
# can give two processes the same number before either has bound it, and then one test's
# client reaches another test's edge.
PORT_BASE, PORTS_EACH = 20000, 1500


def _port_numbers() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = PORT_BASE + (int(worker) if worker.isdigit() else 0) % 8 * PORTS_EACH
    # a new run does not start where the last one's leftovers may still be
    start = secrets.randbelow(PORTS_EACH)
    for n in range(PORTS_EACH):
        yield first + (start + n) % PORTS_EACH


_PORTS = _port_numbers()


def _free(kind: int) -> int:
    for port in _PORTS:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (by something outside this test run)
            return port
    raise AssertionError(f"this test process used all of its {PORTS_EACH} ports")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no other test process of this run is handed."""
    return _free(socket.SOCK_STREAM)


def udp_free_port() -> int:
    return _free(socket.SOCK_DGRAM)


@contextlib.contextmanager
def pebble_server(d: Path, http_port: int, validity_days: int):
    """Debian's pebble (Let's Encrypt's test CA) on loopback ports of its own, with
    pebble-challtestsrv as its DNS (every name -> 127.0.0.1): it fetches HTTP-01
    challenges from 127.0.0.1:`http_port`. Its files in `d`; stopped afterwards."""
    assert shutil.which("pebble") and shutil.which("pebble-challtestsrv"), (
        "install Debian's pebble package (make test does)"
    )
    ca, ca_key = make_ca("Pebble endpoint test CA")
    cert, key = make_leaf(ca, ca_key, "localhost", days=30)
    (d / "ca.pem").write_text(ca)
    (d / "cert.pem").write_text(cert)
    (d / "key.pem").write_text(key)
    acme, mgmt, dns, chall = free_port(), free_port(), udp_free_port(), free_port()
    (d / "config.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{acme}",
                    "managementListenAddress": f"127.0.0.1:{mgmt}",
                    "certificate": str(d / "cert.pem"),
                    "privateKey": str(d / "key.pem"),
                    "httpPort": http_port,
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    "certificateValidityPeriod": validity_days * 86400,
                }
            }
        )
    )
    logs = open(d / "pebble.log", "w")
    challtest = subprocess.Popen(
        [
            "pebble-challtestsrv",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            f"127.0.0.1:{dns}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            f"127.0.0.1:{chall}",
        ],
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    server = subprocess.Popen(
        ["pebble", "-config", str(d / "config.json"), "-dnsserver", f"127.0.0.1:{dns}"],
        env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    try:

        @tenacity.retry(
            stop=tenacity.stop_after_delay(20), wait=tenacity.wait_fixed(0.3), reraise=True
        )
        def root() -> str:
            return (
                httpx.get(
                    f"https://localhost:{mgmt}/roots/0",
                    verify=tls.client_context(ca_file=d / "ca.pem"),
                    trust_env=False,
                )
                .raise_for_status()
                .text
            )

        (d / "issuer-root.pem").write_text(root())
        yield {
            "directory": f"https://localhost:{acme}/dir",
            "port": acme,
            "endpoint_ca": d / "ca.pem",
            "root": d / "issuer-root.pem",
            "challtestsrv": f"http://127.0.0.1:{chall}",
            "dir": d,
        }
    finally:
        for proc in (server, challtest):
            proc.terminate()
            proc.wait(timeout=10)
        logs.close()
        print((d / "pebble.log").read_text()[-3000:], file=sys.stderr)


REGISTRY_USER = "ci"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """docker-registry on 127.0.0.1:<free port> (the engine trusts loopback registries over HTTP)."""
    binary = shutil.which("docker-registry")
    if not binary:
        pytest.fail("Debian's docker-registry is not installed: `make test-deps` installs it")
    root = tmp_path_factory.mktemp("registry")
    password = secrets.token_urlsafe(16)
    (root / "htpasswd").write_bytes(
        f"{REGISTRY_USER}:".encode()
        + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10))
        + b"\n"
    )
    port = free_port()
    (root / "config.yml").write_text(f"""version: 0.1
log: {{level: warn}}
storage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: true}}}}
http: {{addr: 127.0.0.1:{port}}}
auth: {{htpasswd: {{realm: colorgate-test, path: {root}/htpasswd}}}}
""")
    # its log to a file: a pipe nobody reads fills up and the registry stops answering
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}", password
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def isolated_env(tag: str = "") -> dict[str, str]:
    """COLORGATE_* overrides for a stack nobody else uses."""
    run_id = f"cgtest{tag}{os.getpid()}{secrets.token_hex(2)}"
    return {
        "COLORGATE_PROFILE": "development",
        "COLORGATE_PROJECT": run_id,
        "COLORGATE_IMAGE_PREFIX": f"{run_id}/",
        "COLORGATE_HTTP_PORT": str(free_port()),
        "COLORGATE_HTTPS_PORT": str(free_port()),
        # every test client sends from one address, some at hundreds of requests a
        # second: the per-client limits stay on, above them (test_stack tests the limits)
        "COLORGATE_RATE_LIMIT": "100000",
        "COLORGATE_RATE_BURST": "100000",
        "COLORGATE_CONN_LIMIT": "65535",
    }


def remove_stack(settings: config.Settings) -> None:
    """Containers, networks and volumes of the project, then the image tags it made."""
    stack.destroy(settings)


def dump_logs(settings: config.Settings) -> None:
    proc = runner.run(
        compose.compose_cmd(settings, "logs", "--tail", "40"),
        env=settings.compose_env(),
        check=False,
    )
    print(
        f"\n---- container logs of {settings.project} ----\n{proc.stdout}{proc.stderr}",
        file=sys.stderr,
    )


@pytest.fixture(scope="session")
def stack_env():
    return isolated_env()


@pytest.fixture(scope="session")
def settings(stack_env):
    return profiles.load("development", environ={**os.environ, **stack_env})


@contextlib.contextmanager
def running_stack(request, settings: config.Settings):
    """`up` from nothing, yielding the status after it; on the way out, logs if anything
    failed, then remove it all."""
    try:
        starting.start_stack(settings)
        yield views.status(settings)
    finally:
        if request.session.testsfailed:
            dump_logs(settings)
        remove_stack(settings)


def gates_strict_then_accepted(settings: config.Settings):
    """The live color's gates twice, for an app whose docs put a secret in its environment:
    with COLORGATE_SECRETS_IN_ENV=refuse (the Hardening gate names it), then with the
    operator's acceptance the settings carry. Returns both results."""
    active = edge.read_active(settings)
    strict = dataclasses.replace(
        settings,
        secrets_in_env="refuse",
        raw={**settings.raw, "COLORGATE_SECRETS_IN_ENV": "refuse"},
    )
    return (
        gates.run_gates(strict, "pre or post", active.color, active.version),
        gates.run_gates(settings, "pre or post", active.color, active.version),
    )


@pytest.fixture(scope="session")
def live_stack(request, settings):
    """The stack shared by the tests that only read."""
    with running_stack(request, settings) as status:
        yield status


@pytest.fixture
def scratch(request):
    """A second, function-scoped isolated stack (not started) for destructive tests."""
    env = isolated_env("x")
    s = profiles.load("development", environ={**os.environ, **env})
    try:
        yield env, s
    finally:
        if getattr(request.node, "rep_call_failed", False):
            dump_logs(s)
        remove_stack(s)


def invoke(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI, as an operator would."""
    return subprocess.run(
        [INVOKE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.project_root(),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call_failed = report.failed


@contextlib.contextmanager
def paused_at(phase: str, *args: str, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`invoke ARGS`, waiting at `phase` (COLORGATE_PAUSE_AT): yields the process (send it
    a signal, or SIGUSR1 to go on); on the way out, its output is on `.result`."""
    proc = subprocess.Popen(
        [INVOKE, *args],
        env={**os.environ, **env, locking.PAUSE_ENV: phase},
        cwd=config.project_root(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(f".. paused at {phase}"):
                break
        else:
            proc.wait()
            pytest.fail(f"`invoke {' '.join(args)}` ended before {phase}:\n{''.join(seen)}")
        yield proc
        out, err = proc.communicate(timeout=300)
        proc.result = subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
