#!/usr/bin/env python3
"""Fit for a small VPS: remote commands against local ones, and what an idle
stack costs.

Starts its own isolated stack of the app (COLORGATE_APP) and an SSH server on loopback
(Debian's openssh-server in a container on the host's network, in front of this same
engine), then, in alternating rounds so both see the same machine:

  1. times `invoke status`, a gated `invoke deploy` and `invoke rollback --no-gates`
     (wall time, as the operator waits for them) locally and with --host ssh://...,
     and prints the SSH/local ratio of the medians; the sshd's own log gives the SSH
     connections each command opened;
  2. measures, with the two-color stack idle (no traffic) over a fixed window, what it
     costs: its containers' own CPU (their cgroups) plus what the Docker engine's
     processes spend above their CPU in a window before the stack started (health-check
     execs, shims), and its memory; the whole machine's CPU (/proc/stat) is shown too.

    python benchmarks/remote_and_idle.py --rounds 3 --json out.json

The SSH helpers (ssh_host, keygen, operator_home) are shared with tests/integration/test_ssh.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.switch_under_load import free_port  # noqa: E402
from deploy import bases, config, profiles, stack, starting  # noqa: E402
from deploy.target import connections, runner

INVOKE = str(Path(sys.executable).with_name("invoke"))
TARGETS = {"status": 1.3, "deploy": 1.3, "rollback": 1.3}  # SSH/local wall time
IDLE_TARGET = 2.0  # % of one core
MEMORY_TARGET = 256  # MiB


# --- an SSH server on loopback in front of this engine -----------------------------------


SSHD = bases.BaseImage("sshd", ("openssh-server", "iproute2"))
SOCKET = "/var/run/docker.sock"

SSHD_SCRIPT = """set -eu
ssh-keygen -A > /dev/null
group=$(getent group "$SOCKET_GID" | cut -d: -f1)
[ -n "$group" ] || { groupadd -g "$SOCKET_GID" dockerhost; group=dockerhost; }
useradd --create-home --shell /bin/bash deploy
usermod -aG "$group" deploy
install -d -m 700 -o deploy -g deploy /home/deploy/.ssh
printf '%s\\n' "$AUTHORIZED_KEY" > /home/deploy/.ssh/authorized_keys
chown deploy:deploy /home/deploy/.ssh/authorized_keys
chmod 600 /home/deploy/.ssh/authorized_keys
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -o LogLevel=VERBOSE -p "$PORT" -o ListenAddress="$LISTEN" -o PasswordAuthentication=no -o AllowUsers=deploy
"""


def keygen(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "colorgate-test", "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclasses.dataclass
class SshHost:
    url: str
    port: int
    container: str


@contextlib.contextmanager
def ssh_host(
    authorized_key: str, with_docker: bool = True, socket: str = SOCKET, listen: str = "127.0.0.1"
):
    """An SSH server on `listen`:<free port> whose `deploy` user reaches the engine at
    `socket` (not `with_docker`: a host with neither the engine's socket nor the CLI;
    an SFTP server, say, listening on docker0 for containers to reach)."""
    settings = profiles.load("development")
    if not bases.image_exists(settings, SSHD.tag(settings.base_source)):
        bases.build_bases(settings, [SSHD])
    port = free_port()
    name = f"cgtestsshd{os.getpid()}{secrets.token_hex(2)}"
    mounts = (
        ["-v", f"{socket}:{SOCKET}", "-v", f"{shutil.which('docker')}:/usr/bin/docker:ro"]
        if with_docker
        else []
    )
    try:  # a container that docker created but could not start is removed too
        runner.run(
            [
                "docker",
                "run",
                "--detach",
                "--name",
                name,
                "--network",
                "host",
                *mounts,
                "-e",
                f"SOCKET_GID={os.stat(socket).st_gid}",
                "-e",
                f"PORT={port}",
                "-e",
                f"LISTEN={listen}",
                "-e",
                "AUTHORIZED_KEY",
                SSHD.tag(settings.base_source),
                "sh",
                "-c",
                SSHD_SCRIPT,
            ],
            env={"AUTHORIZED_KEY": authorized_key},
        )
        for _ in range(100):
            if subprocess.run(
                ["ssh-keyscan", "-T", "1", "-p", str(port), listen], capture_output=True
            ).stdout:
                break
            time.sleep(0.2)
        yield SshHost(f"ssh://deploy@{listen}:{port}", port, name)
    finally:
        runner.run(["docker", "rm", "--force", "--volumes", name], check=False)


def operator_home(root: Path, port: int, known: bool = True) -> Path:
    """An operator's SSH setup of its own: key, known_hosts, strict host key checking.
    OpenSSH reads ~ from the password database, not $HOME, so `ssh` on PATH is the
    real one given this setup's config file (-F)."""
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if known:
        scan = subprocess.run(
            ["ssh-keyscan", "-p", str(port), "127.0.0.1"], capture_output=True, text=True
        ).stdout
        (home / ".ssh" / "known_hosts").write_text(scan)
    (home / ".ssh" / "config").write_text(
        f"Host *\n  IdentityFile {home}/.ssh/id_ed25519\n  IdentitiesOnly yes\n  UserKnownHostsFile {home}/.ssh/known_hosts\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n"
    )
    (home / "bin").mkdir(exist_ok=True)
    wrapper = home / "bin" / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {home}/.ssh/config "$@"\n')
    wrapper.chmod(0o755)
    return home


def operator_env(env: dict[str, str], home: Path) -> dict[str, str]:
    return {**env, "PATH": f"{home}/bin:{os.environ['PATH']}"}


# --- timing commands ------------------------------------------------------------------


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [INVOKE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=config.project_root(),
        timeout=900,
    )
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"`invoke {' '.join(args)}` failed:\n{proc.stderr[-2000:]}")
    return took


def logins(container: str) -> int:
    return runner.run(["docker", "logs", container], check=False).stderr.count(
        "Accepted publickey for deploy"
    )


# --- idle cost ------------------------------------------------------------------------


# comm, at most 15 chars
ENGINE = (
    "dockerd",
    "containerd",
    "containerd-shim",
    "fuse-overlayfs",
    "runc",
    "docker-proxy",
)


def _engine_ticks() -> dict[int, int]:
    """CPU ticks of the engine's processes (its own, and the children they reaped: runc,
    each health check's exec), by pid."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, fields = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            stat[stat.rindex(")") + 2 :].split(),
        )
        if comm.startswith(ENGINE):
            ticks[int(entry.name)] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks


def busy_cores(seconds: float) -> tuple[float, float]:
    """Cores kept busy over `seconds`: (the whole machine, from /proc/stat: all but idle
    and iowait; the Docker engine's processes)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    engine0, started = _engine_ticks(), time.monotonic()
    time.sleep(seconds)
    total1, idle1 = sample()
    engine1, took = _engine_ticks(), time.monotonic() - started
    ncpu = os.cpu_count() or 1
    engine = (
        sum(t - engine0.get(pid, 0) for pid, t in engine1.items()) / os.sysconf("SC_CLK_TCK") / took
    )
    return ncpu * (1 - (idle1 - idle0) / max(1, total1 - total0)), engine


def containers(settings: config.Settings) -> list[dict]:
    return connections.engine(
        settings.docker_host,
        "containers",
        filters={"label": f"com.docker.compose.project={settings.project}"},
    )


def idle_costs(settings: config.Settings, seconds: float) -> tuple[float, float, float, float]:
    """(machine cores, the engine's cores, the project's containers' own cores, their MiB)
    over one window of `seconds`: memory is usage less inactive file cache, as `docker
    stats` counts it."""

    def cpu() -> dict[str, int]:
        return {
            c["Id"]: connections.engine(settings.docker_host, "stats", c["Id"], stream=False)[
                "cpu_stats"
            ]["cpu_usage"]["total_usage"]
            for c in containers(settings)
        }

    before, started = cpu(), time.monotonic()
    machine, engine = busy_cores(seconds)
    after, took = cpu(), time.monotonic() - started
    cores = sum(after[k] - before.get(k, after[k]) for k in after) / 1e9 / took
    memory = 0
    for c in containers(settings):
        m = connections.engine(settings.docker_host, "stats", c["Id"], stream=False)["memory_stats"]
        stats = m.get("stats", {})
        memory += m.get("usage", 0) - stats.get(
            "total_inactive_file", stats.get("inactive_file", 0)
        )
    return machine, engine, cores, memory / 2**20


# --- the run --------------------------------------------------------------------------


def run(args) -> dict:
    tag = f"cgvps{os.getpid()}{secrets.token_hex(2)}"
    env = {
        "COLORGATE_PROFILE": "development",
        "COLORGATE_PROJECT": tag,
        "COLORGATE_IMAGE_PREFIX": f"{tag}/",
        "COLORGATE_HTTP_PORT": str(free_port()),
        "COLORGATE_HTTPS_PORT": str(free_port()),
        "COLORGATE_REPORTS_DIR": f"benchmarks/out/{tag}-reports",
    }
    settings = profiles.load("development", environ={**os.environ, **env})
    root = Path(tempfile.mkdtemp(prefix="cgvps-"))
    result: dict = {
        "rounds": args.rounds,
        "idle_window_s": args.idle,
        "baseline_window_s": args.baseline,
    }
    try:
        runner.say(f"-- baseline: the machine without the stack, {args.baseline:g} s")
        machine, engine = busy_cores(args.baseline)
        result["baseline_cores"], result["baseline_engine_cores"] = (
            round(machine, 4),
            round(engine, 4),
        )
        with runner.step("starting the stack"):
            starting.start_stack(settings)
        times, logins_of = _rounds(args.rounds, env, root)
        result["local_s"] = {c: round(statistics.median(v), 3) for c, v in times["local"].items()}
        result["ssh_s"] = {c: round(statistics.median(v), 3) for c, v in times["ssh"].items()}
        result["ratio"] = {c: round(result["ssh_s"][c] / result["local_s"][c], 2) for c in TARGETS}
        result["ssh_connections"] = {c: max(v) for c, v in logins_of.items()}
        # the engine settles after the last command and the SSH server's removal
        time.sleep(args.settle)
        runner.say(f"-- the two-color stack, idle, {args.idle:g} s")
        machine, engine, own, memory = idle_costs(settings, args.idle)
        result["stack_idle_cores"], result["engine_cores"] = round(machine, 4), round(engine, 4)
        result["containers_cores"], result["memory_mib"] = round(own, 4), round(memory, 1)
        result["services"] = len(containers(settings))
    finally:
        if not args.keep:
            stack.destroy(settings)
        shutil.rmtree(root, ignore_errors=True)
    # what the stack costs: its containers, and what the engine spends on them (its
    # processes' CPU above their own without the stack: health-check execs, shims). The
    # machine's figure moves with everything else on it (this sandbox's processes, the
    # kernel's), so it is shown, not judged.
    result["idle_percent_of_one_core"] = round(
        100
        * (
            max(0.0, result["engine_cores"] - result["baseline_engine_cores"])
            + result["containers_cores"]
        ),
        2,
    )
    result["machine_delta_percent"] = round(
        100 * (result["stack_idle_cores"] - result["baseline_cores"]), 2
    )
    return result


def _rounds(rounds: int, env: dict[str, str], root: Path):
    """status, deploy and rollback, each `rounds` times, here and through an SSH host: how
    long each took, and how many SSH logins each through SSH opened."""
    key = keygen(root / "home" / ".ssh" / "id_ed25519")
    with ssh_host(key) as host:
        remote = {**operator_env(env, operator_home(root, host.port))}
        times: dict[str, dict[str, list[float]]] = {
            w: {c: [] for c in TARGETS} for w in ("local", "ssh")
        }
        logins_of: dict[str, list[int]] = {c: [] for c in TARGETS}
        commands = (
            ("status", ["status"]),
            ("deploy", ["deploy"]),
            ("rollback", ["rollback", "--no-gates"]),
        )
        for n in range(rounds):
            for where, extra, e in (("local", [], env), ("ssh", ["--host", host.url], remote)):
                for command, argv in commands:
                    seen = logins(host.container)
                    took = timed([argv[0], *extra, *argv[1:]], e)
                    times[where][command].append(took)
                    if where == "ssh":
                        logins_of[command].append(logins(host.container) - seen)
                    runner.say(f"   round {n + 1} {where:<5} {command:<8} {took:6.2f} s")
    return times, logins_of


def report(r: dict) -> str:
    lines = [
        "over SSH on loopback vs local (median wall time of "
        f"{r['rounds']} rounds; connections: the most any one command opened):"
    ]
    for c in TARGETS:
        lines.append(
            f"   {c:<9} local {r['local_s'][c]:6.2f} s   ssh {r['ssh_s'][c]:6.2f} s   ratio {r['ratio'][c]:.2f}x"
            f"   ssh connections {r['ssh_connections'][c]}"
        )
    lines.append(
        f"idle, over {r['idle_window_s']:g} s ({r['services']} containers): the stack costs "
        f"{r['idle_percent_of_one_core']:.2f}% of one core (its containers {100 * r['containers_cores']:.2f}%, the engine "
        f"{100 * r['engine_cores']:.2f}% against {100 * r['baseline_engine_cores']:.2f}% without the stack); "
        f"memory {r['memory_mib']:.0f} MiB"
    )
    lines.append(
        f"   the whole machine: {100 * r['stack_idle_cores']:.2f}% with the stack, {100 * r['baseline_cores']:.2f}% "
        f"without it ({r['baseline_window_s']:g} s before), a difference of {r['machine_delta_percent']:+.2f}% "
        "(other processes' noise included)"
    )
    lines.append("targets (over SSH against local, and idle CPU):")
    for c, target in TARGETS.items():
        lines.append(
            f"   {'MET ' if r['ratio'][c] < target else 'MISS'}  {c} over SSH vs local: {r['ratio'][c]:.2f}x (target < {target}x)"
        )
    lines.append(
        f"   {'MET ' if r['idle_percent_of_one_core'] < IDLE_TARGET else 'MISS'}  idle CPU of the stack: "
        f"{r['idle_percent_of_one_core']:.2f}% of one core (target < {IDLE_TARGET}%)"
    )
    lines.append(
        f"   {'MET ' if r['memory_mib'] < MEMORY_TARGET else 'MISS'}  memory of the stack: {r['memory_mib']:.0f} MiB "
        f"(target < {MEMORY_TARGET} MiB)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating local/SSH rounds of status, deploy, rollback",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=300.0,
        help="seconds of the idle window with the stack; the default is the images' health-check interval, "
        "so each container's check runs once in it and the figure is the steady state",
    )
    p.add_argument(
        "--baseline", type=float, default=60.0, help="seconds of the window without the stack"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds to wait after the last command before the idle window",
    )
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="leave the stack running")
    args = p.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
