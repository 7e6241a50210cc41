#!/usr/bin/env python3
"""Write-freeze duration of `db.move` in each mode, under a steady write load.

For each mode: an isolated stack, `--rows` seeded notes, a second PostgreSQL standing in
for the managed service (published on the docker0 address, reached only by URL), and
clients writing notes through the public edge without pause while the move runs. The
baseline, measured in the same run on the same data, is a plain `db.backup` (pg_dump):
the least any dump-based cutover must freeze. Prints the figures, writes JSON (--json),
removes everything it started.

    python benchmarks/db_move.py --rows 1000000 --json benchmarks/out/db_move.json

The helpers (managed_postgres, Writer) are shared with tests/integration/test_move.py.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime
import functools
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from deploy import bases, config, profiles, stack, starting  # noqa: E402
from deploy.data import db, move
from deploy.edge import tls  # noqa: E402
from deploy.release import gates
from deploy.target import dbfacts, runner

SEED_SQL = "INSERT INTO notes (body) SELECT 'seeded note ' || g || ' ' || md5(g::text) FROM generate_series(1, {rows}) g;"


def docker0() -> str:
    """The host's address on Docker's default bridge: reachable from every container."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[3].split("/")[0]


def free_port_on(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def isolated(run_id: str) -> dict[str, str]:
    """Overrides for a stack of its own, whose replication relay listens on docker0
    with a certificate for that address from the stand-in public CA (public_ca)."""
    relay = docker0()
    return {
        **relay_certificate(relay),
        "COLORGATE_PROFILE": "development",
        "COLORGATE_PROJECT": run_id,
        "COLORGATE_IMAGE_PREFIX": f"{run_id}/",
        "COLORGATE_HTTP_PORT": str(free_port_on("127.0.0.1")),
        "COLORGATE_HTTPS_PORT": str(free_port_on("127.0.0.1")),
        "COLORGATE_MOVE_RELAY_BIND": relay,
        "COLORGATE_MOVE_RELAY_HOST": relay,
        "COLORGATE_MOVE_RELAY_PORT": str(free_port_on(relay)),
        # the writers send from one address: the edge's per-client limits stay on, above them
        "COLORGATE_RATE_LIMIT": "100000",
        "COLORGATE_RATE_BURST": "100000",
        "COLORGATE_CONN_LIMIT": "65535",
    }


@dataclasses.dataclass
class Managed:
    url: str
    container: str
    password: str

    def sql(self, query: str) -> str:
        return runner.run(
            [
                "docker",
                "exec",
                self.container,
                "psql",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "admin",
                "-d",
                "app",
                "-c",
                query,
            ]
        ).stdout.strip()


def certificate_authority(directory: Path, name: str = "Managed PostgreSQL test CA"):
    """A CA as a provider has one: its certificate in `directory`/ca.pem (what the
    provider hands out); returns (path, certificate, key) to sign servers with."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def server_certificate(ca_cert, ca_key, address: str) -> tuple[str, str]:
    """(certificate, key) PEM for a server at IP `address`, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


# PostgreSQL 17 from Debian trixie, as managed services run it (16 or newer: its
# subscriptions can check a server against the system's CAs): the examples' image on it
MANAGED = bases.postgres_base(17)


def managed_image(settings: config.Settings) -> str:
    bases.build_bases(settings, [MANAGED])
    tag = f"{settings.image_prefix}postgres17:test"
    runner.run(
        [
            "docker",
            "build",
            "--quiet",
            "--build-arg",
            f"BASE={MANAGED.tag(settings.base_source)}",
            "--tag",
            tag,
            str(Path(__file__).resolve().parent.parent / "examples" / "postgres-debian"),
        ],
        env={"DOCKER_BUILDKIT": "0"},
    )
    return tag


@functools.cache
def public_ca() -> tuple[Path, x509.Certificate, object]:
    """A CA standing in for the public ones: managed_postgres puts it in the target's
    system store, as a managed database trusts Let's Encrypt's. Made once per process."""
    directory = Path(tempfile.mkdtemp(prefix="cg-public-ca-"))
    atexit.register(shutil.rmtree, directory, True)
    return certificate_authority(directory, "Stand-in public CA")


def relay_certificate(address: str, ca=None) -> dict[str, str]:
    """COLORGATE_MOVE_RELAY_CERT/KEY: files holding a certificate for `address` from the
    stand-in public CA (or `ca`: (path, certificate, key) of another)."""
    ca_path, ca_cert, ca_key = ca or public_ca()
    cert, key = server_certificate(ca_cert, ca_key, address)
    directory = Path(tempfile.mkdtemp(prefix="cg-relay-cert-", dir=ca_path.parent))
    (directory / "fullchain.pem").write_text(
        cert + ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    (directory / "privkey.pem").write_text(key)
    return {
        "COLORGATE_MOVE_RELAY_CERT": str(directory / "fullchain.pem"),
        "COLORGATE_MOVE_RELAY_KEY": str(directory / "privkey.pem"),
    }


@contextlib.contextmanager
def managed_postgres(settings: config.Settings, image: str, network: str = ""):
    """A PostgreSQL outside the stack, published on docker0 (or on `network`, at its own
    address there), serving TLS with a certificate from a CA of its own, as a provider's
    does: its URL names the CA file (sslrootcert), so Colorgate verifies it
    (verify-full). It trusts the stand-in public CA, as a provider's trusts the public
    ones. Removed afterwards."""
    password = secrets.token_urlsafe(16)
    name = f"{settings.project}-managed-{secrets.token_hex(3)}"
    directory = Path(tempfile.mkdtemp(prefix="cg-managed-ca-"))
    try:  # a container that docker created but could not start is removed too
        address = "" if network else docker0()
        port = 5432 if network else free_port_on(address)
        published = ["--network", network] if network else ["-p", f"{address}:{port}:5432"]
        runner.run(
            ["docker", "run", "--detach", "--name", name, "-e", "POSTGRES_USER=admin"]
            + ["-e", "POSTGRES_DB=app", "-e", "POSTGRES_PASSWORD", *published, image],
            env={"POSTGRES_PASSWORD": password},
        )
        if network:
            address = runner.run(
                ["docker", "inspect", "--format"]
                + ["{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]
            ).stdout.strip()
        ca_path, ca_cert, ca_key = certificate_authority(directory)
        managed = Managed(
            f"postgresql://admin:{password}@{address}:{port}/app?sslrootcert={ca_path}",
            name,
            password,
        )
        _wait_ready(name)
        _serve_tls(managed, ca_cert, ca_key, address)
        managed.sql("SELECT 1")
        yield managed
    finally:
        runner.run(["docker", "rm", "--force", "--volumes", name], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(name: str) -> None:
    """Ready once the first start's initialization is over (TCP is off until then)."""
    for _ in range(120):
        ready = ["docker", "exec", name, "pg_isready", "-q", "-h", "127.0.0.1"]
        if runner.run(ready, check=False).returncode == 0:
            return
        time.sleep(0.5)


def _serve_tls(managed: Managed, ca_cert, ca_key, address: str) -> None:
    """A server certificate from the CA for `address`, read again on a reload; and the
    stand-in public CA trusted, as a provider's trusts the public ones."""
    cert, key = server_certificate(ca_cert, ca_key, address)
    runner.run(
        ["docker", "exec", "-i", "-e", "CERT", managed.container, "sh", "-c"]
        + ['umask 077; printf "%s" "$CERT" > "$PGDATA/server.crt"; cat > "$PGDATA/server.key"'],
        input=key,
        env={"CERT": cert},
    )
    managed.sql("SELECT pg_reload_conf()")  # PostgreSQL reads its certificate again on reload
    runner.run(
        ["docker", "exec", "-i", "--user", "0", managed.container, "sh", "-c"]
        + [
            "command -v update-ca-certificates > /dev/null || exit 0; "
            "cat > /usr/local/share/ca-certificates/public.crt && update-ca-certificates > /dev/null"
        ],
        input=public_ca()[0].read_text(),
    )


class Writer:
    """Clients writing notes through the public edge without pause, each request on a
    new connection; every answer is accounted for: acknowledged (some of them held by
    the edge during the freeze first), refused, or an error."""

    def __init__(self, settings: config.Settings, threads: int = 2):
        self.settings, self.ca = settings, tls.read_local_ca(settings)
        self.acked: list[str] = []
        self.held: list[tuple[str, str, int]] = []  # (body, color that answered, ms held)
        self.refused: list[tuple[int, str, str]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(threads)]

    def run(self, n: int) -> None:
        with gates.edge_client(self.settings, self.ca) as client:
            i = 0
            while not self.stop.is_set():
                body = f"w{n}-{i}"
                i += 1
                try:
                    r = client.post(
                        "/api/notes", json={"body": body}, headers={"Connection": "close"}
                    )
                except httpx.HTTPError as exc:
                    self.errors.append(f"{body}: {type(exc).__name__}: {exc}")
                    continue
                if r.status_code == 201:
                    self.acked.append(body)
                    if r.headers.get("x-colorgate-held-ms"):
                        self.held.append(
                            (
                                body,
                                r.headers.get("x-colorgate-color", ""),
                                int(r.headers["x-colorgate-held-ms"]),
                            )
                        )
                elif r.status_code == 503 and "writes are paused" in r.text:
                    self.refused.append((r.status_code, r.headers.get("retry-after", ""), body))
                    time.sleep(0.05)
                else:
                    self.errors.append(f"{body}: HTTP {r.status_code} {r.text[:80]}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        time.sleep(1)  # writes after the cutover, on the new database
        self.stop.set()
        for t in self.threads:
            t.join()

    def lost(self, managed: Managed) -> list[str]:
        """Acknowledged writes missing from the new database."""
        on_target = set(managed.sql("SELECT body FROM notes WHERE body LIKE 'w%'").split())
        return [body for body in self.acked if body not in on_target]


def one_mode(mode: str, rows: int) -> dict:
    run_id = f"cgmovebench{os.getpid()}{secrets.token_hex(2)}"
    settings = profiles.load("development", environ={**os.environ, **isolated(run_id)})
    try:
        starting.start_stack(settings)
        runner.run(
            dbfacts.psql_cmd(f"{settings.project}-postgres-1", settings),
            input=SEED_SQL.format(rows=rows),
            env=settings.docker_env(),
            what="seeding",
        )
        t = time.monotonic()
        db.backup(settings)
        backup_s = time.monotonic() - t
        with managed_postgres(settings, managed_image(settings)) as managed:
            with Writer(settings) as writer:
                t = time.monotonic()
                record = move.move(settings, managed.url, mode=mode)
                move_s = time.monotonic() - t
            lost = writer.lost(managed)
    finally:
        stack.destroy(settings)
    return {
        "mode": mode,
        "rows": rows,
        "write_freeze_s": record.timings["write_freeze"],
        "move_s": round(move_s, 2),
        "backup_baseline_s": round(backup_s, 2),
        "acked": len(writer.acked),
        "held": len(writer.held),
        "held_max_ms": max((ms for _, _, ms in writer.held), default=0),
        "refused": len(writer.refused),
        "lost": len(lost),
        "errors": len(writer.errors),
        "timings": record.timings,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--modes", default=",".join(move.MODES))
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    results = [one_mode(mode, args.rows) for mode in args.modes.split(",")]
    for r in results:
        print(
            f"{r['mode']:<9} {r['rows']} rows: write freeze {r['write_freeze_s']:.1f} s "
            f"({r['write_freeze_s'] / r['backup_baseline_s']:.1f}x a plain backup of {r['backup_baseline_s']:.1f} s); "
            f"whole move {r['move_s']:.1f} s; writes acked {r['acked']} (held first {r['held']}, at most "
            f"{r['held_max_ms']} ms), refused {r['refused']}, lost {r['lost']}, "
            f"errors {r['errors']}"
        )
    if len(results) == 2:
        print(
            f"replicate/dump write freeze: {results[1]['write_freeze_s'] / results[0]['write_freeze_s']:.2f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == 0 and r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
