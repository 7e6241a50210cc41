#!/usr/bin/env python3
"""Switching under load: Colorgate's switch against the naive recreate baseline.

Starts its own isolated stack of the app (COLORGATE_APP; own compose project,
loopback ports, image names), deploys a second version so both colors run, then
keeps a steady HTTPS load on the edge while it:

  1. switches colors N times without gates (switch latency: command start until the
     first answer from the new color),
  2. runs M full gated switches (pre gates, switch, post gates),
  3. rolls back once without gates,
  4. baseline: recreates the live color's routed services K times with
     `docker compose up -d --force-recreate` (what a naive zero-downtime script does).

The load, side by side in one run:
  - clients that never retry: wrk (Debian's), keep-alive connections paced to --rps,
    pinned to the last CPU; each phase is one wrk run, whose socket errors and non-2xx
    answers are lost requests. This is the figure that counts.
  - clients that retry once: a small Python client (--retry-rps) on keep-alive
    connections that resends a request once on a new connection when a reused
    connection closed before answering (what browsers do); it gives the latencies
    plotted in the PNG.
  - a long-lived stream (--stream PATH, e.g. server-sent events) opened before the
    first switch and kept open across every switch.
Paths: --path (repeatable), else each routed service's health path from the app's
contract (which may be heavier than the app's usual requests: a database query each).

With --swarm N the same phases run on the test Swarm of tests/integration/swarm.py
(N Docker engines in containers, a registry every node pulls from): the app's images
are built here and pushed, as CI would, every colored service runs --replicas tasks
spread over the nodes, and the load goes to the edge on the manager. Its baseline is
what Swarm offers by itself: `docker service update --force`, a rolling restart of the
live color's routed services.

A load client that cannot keep its rate measures itself: each phase's achieved rate
and late requests are checked, and a run that fell behind prints why, writes no
figures and exits 8.

    python benchmarks/switch_under_load.py --switches 20 --rps 200 --json out.json --png out.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import apply, config, edge, profiles, stack, starting  # noqa: E402
from deploy.colors import other  # noqa: E402
from deploy.edge import tls  # noqa: E402
from deploy.errors import BENCH_INVALID, GateFailed  # noqa: E402
from deploy.release import releases
from deploy.target import facts, runner, swarm
from deploy.target.compose import compose_cmd, compose_env

WRK_SCRIPT = Path(__file__).with_name("wrk_record.lua")
MIN_RATE_SHARE = 0.95  # a phase whose client achieved less than this share of its rate is not valid
MAX_LATE_SHARE = (
    0.01  # nor one where more than this share of requests left >100 ms after their slot
)

# The targets the figures are held to (medians over the run), printed beside the results.
TARGETS = {
    "failed_never_retry": ("failed requests, clients that never retry (all switches)", 0),
    "switch_ms": ("switch, command to first new-color answer (median, ms)", 150),
    "gated_ms": ("gated switch, pre + switch + post (median, ms)", 2000),
    "rollback_ms": ("rollback without gates, inside the command (ms)", 300),
    "stream_gap_s": ("stream across every switch, longest gap (s)", 1.0),
}


# --- clients that never retry: wrk ---------------------------------------------------


@dataclass
class WrkRun:
    """One phase of wrk load: its totals and every answer (arrival time, status, color)."""

    phase: str
    rate: int
    started: float
    requests: int = 0
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)
    late: int = 0
    slots: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    answers: list[tuple[float, int, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def behind(self) -> str:
        """Why this run does not count (the client set the pace), or ''. In the baseline
        phase the server breaks by design (requests hang on a recreated container until
        every connection waits): late requests there make its failures a lower bound."""
        if self.achieved < MIN_RATE_SHARE * self.rate:
            return f"{self.phase}: wrk achieved {self.achieved:.0f} req/s of the {self.rate} asked"
        if self.phase != "baseline" and self.slots and self.late > MAX_LATE_SHARE * self.slots:
            return f"{self.phase}: {self.late} of {self.slots} wrk requests left over 100 ms after their slot"
        return ""


def pin() -> list[str]:
    """Run the load client on the last CPU, so it competes as little as it can with
    the stack (which the kernel then mostly schedules on the others)."""
    cpus = os.cpu_count() or 1
    return ["taskset", "-c", str(cpus - 1)] if cpus > 1 and shutil.which("taskset") else []


class Wrk:
    """wrk running for one phase: started before, stopped (SIGINT) after."""

    def __init__(
        self, url: str, paths: list[str], rate: int, phase: str, workdir: Path, warmup: float
    ):
        self.log = workdir / f"wrk-{phase}.log"
        # room for answers of up to 1 s at the full rate (open loop in effect)
        connections = max(16, rate)
        self.run = WrkRun(phase, rate, time.monotonic())
        self.proc = subprocess.Popen(
            [
                *pin(),
                "wrk",
                "-t1",
                f"-c{connections}",
                "-d3600s",
                "--timeout",
                "15s",
                "-s",
                str(WRK_SCRIPT),
                url,
                "--",
                str(rate),
                str(warmup),
                str(self.log),
                *paths,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> WrkRun:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        m = re.search(r"^COLORGATE (.*)$", out, re.MULTILINE)
        if not m:
            raise SystemExit(f"wrk gave no summary for {self.run.phase}: {out[-500:]}")
        v = {k: int(x) for k, x in (item.split("=") for item in m.group(1).split())}
        r = self.run
        r.requests, r.seconds, r.late, r.slots = (
            v["requests"],
            v["duration_us"] / 1e6,
            v["late"],
            v["slots"],
        )
        r.errors = {k: v[k] for k in ("connect", "read", "write", "status", "timeout") if v[k]}
        r.p50_ms, r.p99_ms, r.max_ms = v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000
        for line in self.log.read_text().splitlines():
            t, status, color = line.split()
            r.answers.append((float(t), int(status), color))
        r.answers.sort()
        return r


# --- clients that retry once, and the stream: Python -----------------------------------


@dataclass
class Req:
    t: float  # start (time.monotonic())
    latency: float
    ok: bool
    status: int
    color: str
    error: str = ""
    retried: bool = False  # answered on the second try after a reused connection closed


@dataclass
class Stream:
    path: str = ""
    opened_color: str = ""
    events: int = 0
    max_gap_s: float = 0.0
    error: str = ""
    closed_by_us: bool = False

    @property
    def survived(self) -> bool:
        return self.closed_by_us and not self.error


class RetryOnce:
    """Keep-alive clients at a low steady rate that resend a request once, on a new
    connection, when a reused connection closed before any answer; plus the stream.
    Runs in a thread of its own with its own event loop."""

    def __init__(
        self,
        settings: config.Settings,
        ca_pem: str,
        paths: list[str],
        rate: int,
        stream_path: str | None,
    ):
        # the edge's address, spoken to as the domain (Host, SNI, certificate), as the gates' client does
        self.base_url, self.ca_pem, self.paths, self.rate = edge_url(settings), ca_pem, paths, rate
        self.server_name = settings.domain
        self.records: list[Req] = []
        self.stream = Stream(stream_path or "")
        self.late = self.slots = 0
        self.stop_flag, self.stop_stream_flag = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self.stop_stream_flag.set()
        self.thread.join(timeout=60)

    async def main(self) -> None:
        verify = tls.client_context(self.ca_pem)
        host = {"Host": self.server_name}
        keepalive = httpx.AsyncClient(
            base_url=self.base_url, verify=verify, timeout=15, trust_env=False, headers=host
        )
        fresh = httpx.AsyncClient(
            base_url=self.base_url,
            verify=verify,
            timeout=15,
            trust_env=False,
            headers=host,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        stream_task = asyncio.create_task(self._stream(keepalive)) if self.stream.path else None
        tasks: set[asyncio.Task] = set()
        t0, i = time.monotonic(), 0
        while not self.stop_flag.is_set():
            wait = t0 + i / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.1:
                self.late += 1
            self.slots += 1
            task = asyncio.create_task(self._one(keepalive, fresh, self.paths[i % len(self.paths)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=20)
        if stream_task:
            await asyncio.wait_for(stream_task, timeout=20)
        await keepalive.aclose()
        await fresh.aclose()

    async def _one(self, keepalive: httpx.AsyncClient, fresh: httpx.AsyncClient, path: str) -> None:
        t = time.monotonic()
        client = keepalive
        for attempt in (1, 2):
            try:
                r = await client.get(path, extensions={"sni_hostname": self.server_name})
                self.records.append(
                    Req(
                        t,
                        time.monotonic() - t,
                        200 <= r.status_code < 300,
                        r.status_code,
                        r.headers.get("x-colorgate-color", ""),
                        retried=attempt > 1,
                    )
                )
                return
            except httpx.RemoteProtocolError as exc:
                if attempt == 1 and "without sending a response" in str(exc):
                    client = fresh
                    continue
                self.records.append(
                    Req(
                        t,
                        time.monotonic() - t,
                        False,
                        0,
                        "",
                        f"{type(exc).__name__}: {exc}"[:120],
                        attempt > 1,
                    )
                )
                return
            except httpx.HTTPError as exc:
                self.records.append(
                    Req(
                        t,
                        time.monotonic() - t,
                        False,
                        0,
                        "",
                        f"{type(exc).__name__}: {exc}"[:120],
                        attempt > 1,
                    )
                )
                return

    async def _stream(self, client: httpx.AsyncClient) -> None:
        last = time.monotonic()
        try:
            async with client.stream(
                "GET",
                self.stream.path,
                timeout=httpx.Timeout(15, read=10),
                extensions={"sni_hostname": self.server_name},
            ) as r:
                self.stream.opened_color = r.headers.get("x-colorgate-color", "")
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        self.stream.events += 1
                        self.stream.max_gap_s = max(self.stream.max_gap_s, time.monotonic() - last)
                        last = time.monotonic()
                    if self.stop_stream_flag.is_set():
                        self.stream.closed_by_us = True
                        return
                self.stream.error = "the server ended the stream early"
        except httpx.HTTPError as exc:
            self.stream.error = f"{type(exc).__name__}: {exc}"[:200]

    def window(self, start: float, end: float) -> dict:
        rs = [r for r in self.records if start <= r.t < end]
        failed = [r for r in rs if not r.ok]
        return {
            "requests": len(rs),
            "failed": len(failed),
            "retried_once": sum(1 for r in rs if r.retried),
            "failure_examples": sorted({r.error or f"HTTP {r.status}" for r in failed})[:3],
        }

    def behind(self) -> str:
        if self.slots and self.late > MAX_LATE_SHARE * self.slots:
            return (
                f"the retry-once client sent {self.late} of {self.slots} requests over 100 ms late"
            )
        return ""


# --- figures ---------------------------------------------------------------------------


def first_answer_from(run: WrkRun, since: float, color: str) -> float | None:
    """Seconds from `since` until the first answer from `color` that arrived after it."""
    return next(
        (t - since for t, status, c in run.answers if t >= since and c == color and status < 400),
        None,
    )


def longest_gap(run: WrkRun, start: float, end: float) -> float:
    """Longest time without a successful answer arriving, inside [start, end)."""
    points = [start, *(t for t, status, _ in run.answers if start <= t < end and status < 400), end]
    return max(b - a for a, b in itertools.pairwise(points))


def ms(values: list[float]) -> dict:
    if not values:
        return {"median": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(values) * 1000, 1),
        "max": round(max(values) * 1000, 1),
        "n": len(values),
    }


def wrk_figures(run: WrkRun) -> dict:
    return {
        "requests": run.requests,
        "failed": run.failed,
        "errors": run.errors,
        "achieved_rps": round(run.achieved, 1),
        "asked_rps": run.rate,
        "late": run.late,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
        "max_ms": run.max_ms,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_settings() -> config.Settings:
    run_id = f"cgbench{os.getpid()}{secrets.token_hex(2)}"
    env = {
        "COLORGATE_PROFILE": "development",
        "COLORGATE_PROJECT": run_id,
        "COLORGATE_IMAGE_PREFIX": f"{run_id}/",
        "COLORGATE_HTTP_PORT": str(free_port()),
        "COLORGATE_HTTPS_PORT": str(free_port()),
        "COLORGATE_REPORTS_DIR": f"benchmarks/out/{run_id}-reports",
        # all of the load comes from one address: the edge's per-client limits stay on
        # (their cost is in the figures), set above what this client sends
        "COLORGATE_RATE_LIMIT": "100000",
        "COLORGATE_RATE_BURST": "100000",
        "COLORGATE_CONN_LIMIT": "65535",
    }
    return profiles.load("development", environ={**os.environ, **env})


def load_paths(settings: config.Settings, given: list[str]) -> list[str]:
    """The paths given, else each routed service's health path (the app's contract)."""
    app = settings.app
    return list(dict.fromkeys(given or [app.health[s].path for s in app.routed]))


def edge_url(settings: config.Settings) -> str:
    return f"https://{settings.edge_address}:{settings.https_port}"


def reload(settings: config.Settings, **changes: str) -> config.Settings:
    return profiles.load(
        "development", environ={**os.environ, **settings.as_environment(), **changes}
    )


def push(settings: config.Settings, version: str) -> None:
    """Build the app's images on this machine and push them as `version`, as CI would."""
    invoke = str(Path(sys.executable).with_name("invoke"))
    runner.run(
        [invoke, "images.push", "--version", version],
        env={**os.environ, **settings.as_environment()},
        what=f"pushing the images ({version})",
        timeout=1800,
    )


@contextlib.contextmanager
def on_a_swarm(settings: config.Settings, size: int):
    """The test Swarm of `size` engines with a registry (tests/integration/swarm.py), the
    app's v1 and v2 pushed to it; yields the settings whose target is its manager."""
    from deploy import bases
    from tests.integration.swarm import swarm as test_swarm

    with test_swarm(settings, size=size, registry=True) as cluster:
        here = reload(settings, COLORGATE_REGISTRY=f"{cluster.registry}/{settings.project}")
        bases.build_bases(here, bases.needed_bases(here))
        for version in ("v1", "v2"):
            push(here, version)
        yield reload(
            here,
            COLORGATE_TARGET="swarm",
            COLORGATE_DOCKER_HOST=cluster.docker_host,
            COLORGATE_BIND=cluster.address,
        )


def run(args) -> dict:
    """The stack to measure: on this machine's engine, or on a test Swarm."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `sudo apt-get install wrk` (Debian's package)")
    with contextlib.ExitStack() as scope:
        settings = bench_settings()
        if args.swarm:
            with runner.step(
                f"starting a test Swarm of {args.swarm} engines; pushing the app's images to its registry"
            ):
                settings = scope.enter_context(on_a_swarm(settings, args.swarm))
        return measure(args, settings)


class Phases:
    """One run's phases under load, in order: each starts its own load client, warms up,
    acts, and stops the client; `windows` holds when each acted (time.monotonic())."""

    def __init__(self, args, settings: config.Settings, paths: list[str], workdir: Path):
        self.args, self.settings, self.paths, self.workdir = args, settings, paths, workdir
        self.events: list[tuple[float, str]] = []  # (time.monotonic(), "switch->green" ...)
        self.runs: dict[str, WrkRun] = {}
        self.windows: dict[str, tuple[float, float]] = {}
        self.started: list[Wrk] = []
        self.gated: list[float] = []
        self.pre: list[float] = []
        self.post: list[float] = []
        self.rollback_inside = 0.0
        self.bad_record: dict = {}
        self.clock = 0.0

    @contextlib.contextmanager
    def phase(self, name: str, paths: list[str] | None = None, settle: float = 0.0):
        load = Wrk(
            edge_url(self.settings),
            paths or self.paths,
            self.args.rps,
            name,
            self.workdir,
            self.args.warmup,
        )
        self.started.append(load)
        time.sleep(self.args.warmup + settle)
        start = time.monotonic()
        yield
        self.runs[name] = load.stop()
        self.windows[name] = (start, time.monotonic())

    def switches(self, versions: dict[str, str]) -> None:
        """1. switches without gates"""
        with self.phase("switches"):
            for _ in range(self.args.switches):
                to = other(edge.read_active(self.settings).color)
                self.events.append((time.monotonic(), f"switch->{to}"))
                edge.write_active(self.settings, to, versions[to])
                time.sleep(self.args.pause)

    def gated_switches(self) -> None:
        """2. full gated switches"""
        with self.phase("gated"):
            for _ in range(self.args.gated):
                to = other(edge.read_active(self.settings).color)
                t = time.monotonic()
                self.events.append((t, f"gated->{to}"))
                record = releases.switch(self.settings, to)
                self.gated.append(time.monotonic() - t)
                self.pre.append(record.timings["pre_gates"])
                self.post.append(record.timings["post_gates"])
                time.sleep(self.args.pause)

    def rollback(self) -> None:
        """3. rollback without gates: lock, read the target and history, switch, record, unlock"""
        with self.phase("rollback"):
            before = edge.read_active(self.settings).color
            t = time.monotonic()
            self.events.append((t, f"rollback->{other(before)}"))
            releases.rollback(self.settings, use_gates=False)
            self.rollback_inside = time.monotonic() - t
            time.sleep(self.args.pause)

    def baseline(self, versions: dict[str, str]) -> None:
        """4. baseline: recreate the live color's routed services in place (on a Swarm: its rolling restart)"""
        s = self.settings
        env = compose_env(s, versions)
        with self.phase("baseline"):
            live = edge.read_active(s).color
            routed = [s.app.copy_name(name, live) for name in s.app.routed]
            for _ in range(self.args.baseline):
                self.events.append((time.monotonic(), "recreate"))
                if s.swarm:
                    for name in routed:
                        runner.run(
                            [
                                "docker",
                                "service",
                                "update",
                                "--force",
                                "--quiet",
                                "--detach=false",
                                swarm.service_name(s, name),
                            ],
                            env={**os.environ, **s.docker_env()},
                            timeout=600,
                        )
                else:
                    runner.run(
                        compose_cmd(
                            s,
                            "up",
                            "--detach",
                            "--no-build",
                            "--no-deps",
                            "--force-recreate",
                            *routed,
                        ),
                        env=env,
                    )
                time.sleep(self.args.pause + 2)

    def bad_release(self) -> None:
        """5. a bad release: its gates pass, but one in five of its users' requests fails;
        the analysis of real traffic after the switch must flip it back. The analysis
        compares with the old color's figures over the span before the switch (3 x 5 s):
        not the baseline phase's failures."""
        bad = bad_release(self.settings, self.workdir)
        with self.phase("bad release", [*self.paths, BAD_PATH], settle=15):
            self.clock = time.time() - time.monotonic()
            with contextlib.suppress(GateFailed):
                releases.deploy(bad, version="v-bad")
        self.bad_record = edge.read_history(self.settings)[-1]

    def latencies(self, prefix: str, run: str) -> list[float | None]:
        return [
            first_answer_from(self.runs[run], t, label.split("->")[1])
            for t, label in self.events
            if label.startswith(prefix)
        ]


def measure(args, settings: config.Settings) -> dict:
    """Drive the phases under load; compute the figures once the load has stopped."""
    run = Phases(
        args, settings, load_paths(settings, args.path), Path(tempfile.mkdtemp(prefix="cgbench-"))
    )
    retry = None
    try:
        with runner.step(
            f"starting an isolated stack of {settings.app.file.parent.name} with both colors"
        ):
            starting.start_stack(settings, version="v1")
            if settings.swarm:
                for service in settings.app.colored:
                    apply.scale(settings, service, args.replicas)
            releases.deploy(settings, version="v2")  # both colors now run: blue v1, green v2
        versions = facts.running_versions(facts.service_states(settings))
        retry = RetryOnce(
            settings, tls.read_local_ca(settings), run.paths, args.retry_rps, args.stream
        )
        retry.start()
        began = time.monotonic()
        run.switches(versions)
        run.gated_switches()
        run.rollback()
        retry.stop_stream_flag.set()  # the baseline recreates containers: streams end there
        run.baseline(versions)
        retry.stop()
        if args.bad_release:
            run.bad_release()
    finally:
        for w in run.started:  # a phase that failed half-way leaves no load client behind
            w.kill()
        if retry is not None:
            retry.stop()  # idempotent: flags set, thread joined
        if not args.keep:
            stack.destroy(settings)
        shutil.rmtree(run.workdir, ignore_errors=True)
    behind = [why for why in (*(r.behind() for r in run.runs.values()), retry.behind()) if why]
    if behind:
        return {
            "valid": False,
            "why": behind,
            "client": {name: wrk_figures(r) for name, r in run.runs.items()},
        }
    result = figures(args, settings, run, retry, began)
    if args.png:
        plot(
            run.runs,
            retry,
            run.events,
            began,
            [
                ("baseline recreate" if name == "baseline" else name, *window)
                for name, window in run.windows.items()
                if name != "bad release"
            ],
            args.png,
        )
    return result


def figures(args, settings: config.Settings, run: Phases, retry: RetryOnce, began: float) -> dict:
    """The run's figures, phase by phase, and how they stand against the targets."""
    switch, back, w = (
        run.latencies("switch->", "switches"),
        run.latencies("rollback->", "rollback"),
        run.windows,
    )
    never_retry_failed = sum(run.runs[p].failed for p in ("switches", "gated", "rollback"))
    result = {
        "valid": True,
        "config": {
            "app": str(settings.app.file),
            "swarm_nodes": args.swarm,
            "replicas": args.replicas if args.swarm else None,
            "paths": run.paths,
            "rps": args.rps,
            "retry_rps": args.retry_rps,
            "switches": args.switches,
            "gated": args.gated,
            "baseline": args.baseline,
            "stream": args.stream or None,
            "client_cpu": pin()[-1] if pin() else "any",
        },
        "switch": {
            **ms([x for x in switch if x is not None]),
            "never_answered": switch.count(None),
            "longest_gap_ms": round(longest_gap(run.runs["switches"], *w["switches"]) * 1000, 1),
            "never_retry": wrk_figures(run.runs["switches"]),
            "retry_once": retry.window(*w["switches"]),
        },
        "gated_switch": {
            "total_ms": ms(run.gated),
            "pre_gates_ms": ms(run.pre),
            "post_gates_ms": ms(run.post),
            "never_retry": wrk_figures(run.runs["gated"]),
            "retry_once": retry.window(*w["gated"]),
        },
        "rollback": {
            "first_answer_ms": round(back[0] * 1000, 1) if back and back[0] is not None else None,
            "inside_command_ms": round(run.rollback_inside * 1000, 1),
            "never_retry": wrk_figures(run.runs["rollback"]),
            "retry_once": retry.window(*w["rollback"]),
        },
        "baseline_recreate": {
            "recreations": args.baseline,
            "longest_gap_ms": round(longest_gap(run.runs["baseline"], *w["baseline"]) * 1000, 1),
            "never_retry": wrk_figures(run.runs["baseline"]),
            "retry_once": retry.window(*w["baseline"]),
        },
        "bad_release": bad_release_figures(run.bad_record, run.runs["bad release"], run.clock)
        if args.bad_release
        else None,
        "stream": {**asdict(retry.stream), "survived": retry.stream.survived}
        if args.stream
        else None,
        "seconds": round(time.monotonic() - began, 1),
    }
    result["targets"] = targets(result, never_retry_failed)
    return result


BAD_PATH = "/api/slow?ms=0&from=load"  # what the bad release fails one time in five (its health checks and gates never ask it)
BAD_ANALYSIS = {
    "COLORGATE_ANALYSIS_INTERVALS": "3",
    "COLORGATE_ANALYSIS_SECONDS": "5",
    "COLORGATE_ANALYSIS_MIN_REQUESTS": "20",
}


def bad_release(settings: config.Settings, workdir: Path) -> config.Settings:
    """The app with one change, as a bad release would be: a share of its users'
    requests fail while everything the gates look at works; analysis on."""
    # with its siblings: a build context may be one (../postgres-debian)
    shutil.copytree(settings.app_dir.parent, workdir / "bad")
    copy = workdir / "bad" / settings.app_dir.name
    app = copy / "backend" / "app.py"
    text = app.read_text()
    anchor = '        if url.path == "/api/slow":\n'
    assert anchor in text, (
        "the sample app changed: update benchmarks/switch_under_load.py's bad release"
    )
    app.write_text(
        text.replace(
            anchor,
            '        if query.get("from") == ["load"] and __import__("random").random() < 0.2:\n'
            '            return self.send_json(500, {"error": "a bad release"})\n' + anchor,
            1,
        )
    )
    bad = reload(settings, **BAD_ANALYSIS, COLORGATE_APP=str(copy / "docker-compose.yml"))
    if bad.swarm:  # its nodes pull it: built here and pushed
        push(reload(bad, COLORGATE_TARGET="compose", COLORGATE_DOCKER_HOST=""), "v-bad")
    return bad


def bad_release_figures(record: dict, run: WrkRun, clock: float) -> dict:
    """Time from the switch to the flip-back, and what the users got meanwhile."""
    marks = {
        m["what"].split(" to ")[0]: m["t"] - clock for m in record.get("marks", [])
    }  # on time.monotonic()'s clock
    switched, back = marks.get("switch"), marks.get("switch back")
    if switched is None or back is None:
        return {
            "flipped_back": False,
            "outcome": record["outcome"],
            "detail": record.get("detail", ""),
        }
    window = [(t, status) for t, status, _ in run.answers if switched <= t <= back + 0.5]
    failed = sum(1 for _, status in window if status >= 500 or status == 0)
    return {
        "flipped_back": True,
        "outcome": record["outcome"],
        "time_to_detect_s": round(back - switched, 2),
        "failed": failed,
        "answered": len(window),
        "failed_share": round(failed / len(window), 4) if window else 0.0,
        "analysis": dict(BAD_ANALYSIS),
        "client": wrk_figures(run),
    }


def targets(result: dict, never_retry_failed: int) -> dict:
    stream = result["stream"]
    seen = {
        "failed_never_retry": never_retry_failed,
        "switch_ms": result["switch"]["median"],
        "gated_ms": result["gated_switch"]["total_ms"]["median"],
        "rollback_ms": result["rollback"]["inside_command_ms"],
        "stream_gap_s": round(stream["max_gap_s"], 2) if stream and stream["survived"] else None,
    }
    out = {}
    for key, (label, target) in TARGETS.items():
        value = seen[key]
        if key == "stream_gap_s" and not stream:
            out[key] = {
                "label": label,
                "value": None,
                "target": target,
                "met": None,
            }  # no --stream: not measured
            continue
        met = value is not None and (
            value <= target if key != "failed_never_retry" else value == target
        )
        out[key] = {"label": label, "value": value, "target": target, "met": met}
    return out


def _answers(ax, runs: dict[str, WrkRun], began: float) -> None:
    """The never-retry clients' answers a second, by the color that gave them."""
    for color in ("blue", "green"):
        buckets: dict[int, int] = {}
        for run in runs.values():
            for t, status, c in run.answers:
                if c == color and status < 400:
                    buckets[int((t - began) * 4)] = buckets.get(int((t - began) * 4), 0) + 1
        xs = sorted(buckets)
        ax.bar(
            [x / 4 for x in xs],
            [buckets[x] * 4 for x in xs],
            width=0.25,
            color=color,
            alpha=0.6,
            label=f"answers from {color} (never-retry clients, /s)",
        )


def _latencies(ax, retry: RetryOnce, began: float) -> None:
    """The retry-once client's latency per request, by color; its failures in red."""
    ok = [r for r in retry.records if r.ok]
    bad = [r for r in retry.records if not r.ok]
    for color in ("blue", "green"):
        rs = [r for r in ok if r.color == color]
        ax.scatter(
            [r.t - began for r in rs],
            [r.latency * 1000 for r in rs],
            s=3,
            color=color,
            alpha=0.5,
            label=f"ok ({color})",
        )
    ax.scatter(
        [r.t - began for r in bad],
        [max(r.latency * 1000, 1) for r in bad],
        s=14,
        color="red",
        marker="x",
        label=f"failed ({len(bad)})",
    )


def plot(
    runs: dict[str, WrkRun], retry: RetryOnce, events, began: float, phases, path: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 7), sharex=True)
    _answers(top, runs, began)
    _latencies(bottom, retry, began)
    for ax in (top, bottom):
        for t, label in events:
            ax.axvline(
                t - began,
                color="green"
                if label.endswith("green")
                else "blue"
                if label.endswith("blue")
                else "black",
                lw=0.6,
                alpha=0.6,
            )
        for _, start, end in phases:
            ax.axvspan(start - began, end - began, alpha=0.04, color="gray")
    for name, start, _ in phases:
        top.text(start - began, top.get_ylim()[1], name, fontsize=8, va="top")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds since the load began")
    bottom.set_ylabel("latency, retry-once client (ms)")
    top.set_ylabel("answers a second")
    top.set_title("Colorgate: answers by color and latency under load; switches marked")
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="upper right", markerscale=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict) -> str:
    if not result["valid"]:
        return "\n".join(
            [
                "INVALID RUN: the load client did not hold its rate, so these would be its figures, not Colorgate's:",
                *(f"  {why}" for why in result["why"]),
            ]
        )
    s, g, rb, b = (
        result["switch"],
        result["gated_switch"],
        result["rollback"],
        result["baseline_recreate"],
    )

    def late(n: dict) -> str:
        return (
            f"; {n['late']} sent late, every connection waiting: failures a lower bound"
            if n["late"]
            else ""
        )

    def load(part: dict) -> str:
        n, r = part["never_retry"], part["retry_once"]
        return (
            f"never-retry clients: {n['failed']} failed of {n['requests']} at {n['achieved_rps']}/s "
            f"(asked {n['asked_rps']}/s, p99 {n['p99_ms']} ms{late(n)}); retry-once: {r['failed']} failed of {r['requests']}, "
            f"{r['retried_once']} retried"
        )

    on_swarm = result["config"]["swarm_nodes"]
    lines = [
        f"target: a Swarm of {on_swarm} nodes, {result['config']['replicas']} tasks a colored service"
        if on_swarm
        else "target: one engine",
        f"switch (no gates) x{s['n']}: first answer from the new color after median {s['median']} ms, max {s['max']} ms; "
        f"longest gap {s['longest_gap_ms']} ms",
        f"   {load(s)}",
        f"gated switch x{g['total_ms']['n']}: median {g['total_ms']['median']} ms (max {g['total_ms']['max']}); "
        f"pre gates {g['pre_gates_ms']['median']} ms, post gates {g['post_gates_ms']['median']} ms",
        f"   {load(g)}",
        f"rollback (no gates): {rb['inside_command_ms']} ms inside the command, first answer from the old color after "
        f"{rb['first_answer_ms']} ms",
        f"   {load(rb)}",
        f"baseline ({'docker service update --force' if on_swarm else 'compose up --force-recreate'} "
        f"of the live color) x{b['recreations']}: longest gap {b['longest_gap_ms']} ms",
        f"   {load(b)}",
    ]
    lines += _stream_and_bad_release(result)
    lines.append("targets (a switch under load):")
    for t in result["targets"].values():
        mark = "n/a " if t["met"] is None else "MET " if t["met"] else "MISS"
        lines.append(f"   {mark}  {t['label']}: {t['value']} (target {t['target']})")
    return "\n".join(lines)


def _stream_and_bad_release(result: dict) -> list[str]:
    """The report's lines of the stream kept open across the switches, and of the bad
    release the analysis must switch back."""
    lines = []
    if result["stream"]:
        st = result["stream"]
        lines.append(
            f"stream {st['path']} opened on {st['opened_color']}: {st['events']} events, max gap {st['max_gap_s']:.1f} s, "
            f"survived every switch: {st['survived']} {st['error']}"
        )
    bad = result.get("bad_release")
    if bad and bad["flipped_back"]:
        c = bad["client"]
        lines.append(
            f"bad release (1 in 5 of {BAD_PATH} fails, gates pass; analysis {bad['analysis']['COLORGATE_ANALYSIS_INTERVALS']} x "
            f"{bad['analysis']['COLORGATE_ANALYSIS_SECONDS']} s): flipped back {bad['time_to_detect_s']} s after the switch; "
            f"{bad['failed']} of {bad['answered']} requests answered meanwhile failed ({bad['failed_share']:.1%}); "
            f"wrk {c['achieved_rps']}/s of {c['asked_rps']}/s"
        )
    elif bad:
        lines.append(
            f"bad release: NOT flipped back by the analysis (outcome {bad['outcome']}: {bad['detail'][:200]})"
        )
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--switches", type=int, default=20, help="switches without gates")
    p.add_argument("--gated", type=int, default=3, help="full gated switches")
    p.add_argument("--baseline", type=int, default=3, help="naive recreations of the live color")
    p.add_argument(
        "--rps", type=int, default=200, help="requests a second from the never-retry clients (wrk)"
    )
    p.add_argument(
        "--retry-rps", type=int, default=20, help="requests a second from the retry-once client"
    )
    p.add_argument(
        "--path",
        action="append",
        default=[],
        help="a path to request (repeatable; default: the health paths)",
    )
    p.add_argument(
        "--stream",
        default="",
        help="a long-lived path (server-sent events) to keep open across the switches",
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds between switches")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before each phase's first action"
    )
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--png", help="write the plot to this PNG file")
    p.add_argument(
        "--keep", action="store_true", help="leave the benchmark's stack running (not with --swarm)"
    )
    p.add_argument(
        "--swarm",
        type=int,
        default=0,
        metavar="NODES",
        help="run on a test Swarm of this many engines in containers (tests/integration/swarm.py)",
    )
    p.add_argument(
        "--replicas", type=int, default=3, help="with --swarm: tasks of each colored service"
    )
    p.add_argument(
        "--no-bad-release",
        dest="bad_release",
        action="store_false",
        help="skip the bad release (one in five user requests fails, gates pass) that the analysis must flip back",
    )
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    for path in (args.json, args.png):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if not result["valid"]:
        return BENCH_INVALID
    if args.png:
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
