#!/usr/bin/env python3
"""Switching under load: Colorgate's switch against the naive recreate baseline.

Starts its own isolated stack (own compose project, loopback ports, image names),
deploys a second version so both colors run, then keeps a steady HTTPS load on the
edge from 127.0.0.1 while it:

  1. switches colors N times without gates (switch latency: command start until the
     first response from the new color),
  2. runs M full gated switches (pre gates, switch, post gates),
  3. rolls back once without gates,
  4. baseline: recreates the live backend K times with
     `docker compose up -d --force-recreate` (what a naive zero-downtime script does).

The load mixes fast requests (SPA and API) on keep-alive connections and on a new
connection each, ~1 s slow requests, and one long-lived server-sent-events stream
opened before the first switch. Every loop is bounded in count and time.

Prints the figures, writes JSON (--json) and a PNG of latency over time with the
switches marked (--png), then removes its stack (unless --keep).

    python benchmarks/switch_under_load.py --switches 20 --rps 250 --json out.json --png out.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import secrets
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import config, edge, facts, release, runner, stack, tls  # noqa: E402
from deploy.colors import other  # noqa: E402

MAX_IN_FLIGHT = 400


@dataclass
class Req:
    t: float  # start, seconds since the load began
    latency: float
    kind: str  # fast-keepalive, fast-new-conn, slow
    ok: bool
    status: int
    color: str
    error: str = ""
    retried: bool = False  # answered on the second try after a closed keep-alive connection


@dataclass
class Stream:
    opened_color: str = ""
    events: int = 0
    max_gap_s: float = 0.0
    error: str = ""
    closed_by_us: bool = False

    @property
    def survived(self) -> bool:
        return self.closed_by_us and not self.error and self.max_gap_s < 5


class Load:
    """Open-loop HTTPS load from `procs` worker processes (so the client is not the
    bottleneck on a small machine): `rps` requests a second in all, scheduled on the
    clock whatever the answers take. Results are collected when it stops."""

    def __init__(self, base_url: str, ca_pem: str, rps: int, max_seconds: float, procs: int = 2):
        self.base_url, self.ca_pem, self.rps, self.max_seconds, self.procs = base_url, ca_pem, rps, max_seconds, procs
        self.records: list[Req] = []
        self.stream = Stream()
        self.skipped = 0
        self.t0 = 0.0
        ctx = multiprocessing.get_context("fork")
        self._stop, self._stop_stream, self._results = ctx.Event(), ctx.Event(), ctx.Queue()
        self._workers = [ctx.Process(target=self._work, args=(i,), daemon=True) for i in range(procs)]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self.t0 = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every worker
        for w in self._workers:
            w.start()

    def stop_stream(self) -> None:
        self._stop_stream.set()

    def stop(self) -> None:
        self._stop.set()
        self._stop_stream.set()
        for _ in self._workers:
            records, stream, skipped = self._results.get(timeout=60)
            self.records += records
            self.skipped += skipped
            if stream is not None:
                self.stream = stream
        for w in self._workers:
            w.join(timeout=10)
        self.records.sort(key=lambda r: r.t)

    def _work(self, index: int) -> None:
        worker = _Worker(self, index)
        asyncio.run(worker.main())
        self._results.put((worker.records, worker.stream if index == 0 else None, worker.skipped))


class _Worker:
    """One process's share of the load: every `procs`-th tick, plus the stream in worker 0."""

    def __init__(self, load: Load, index: int):
        self.load, self.index = load, index
        self.records: list[Req] = []
        self.stream = Stream()
        self.skipped = 0
        self._stop, self._stop_stream = load._stop, load._stop_stream

    def now(self) -> float:
        return self.load.now()

    async def main(self) -> None:
        load = self.load
        verify = tls.client_context(load.ca_pem)
        keepalive = httpx.AsyncClient(base_url=load.base_url, verify=verify, timeout=15, trust_env=False,
                                      limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        fresh = httpx.AsyncClient(base_url=load.base_url, verify=verify, timeout=15, trust_env=False,
                                  limits=httpx.Limits(max_connections=64, max_keepalive_connections=0))
        in_flight: set[asyncio.Task] = set()
        stream_task = asyncio.create_task(self._stream(keepalive)) if self.index == 0 else None
        rng = random.Random(7 + self.index)
        i = 0
        while not self._stop.is_set() and self.now() < load.max_seconds:
            delay = (i * load.procs + self.index) / load.rps - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.skipped += 1
                continue
            roll = rng.random()
            if roll < 0.05:
                kind, client, path = "slow", keepalive, "/api/slow?ms=1000"
            elif roll < 0.15:
                kind, client, path = "fast-new-conn", fresh, rng.choice(["/api/version", "/"])
            else:
                kind, client, path = "fast-keepalive", keepalive, rng.choice(["/api/version", "/"])
            task = asyncio.create_task(self._one(client, kind, path, fresh))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=20)
        if stream_task:
            self._stop_stream.set()
            await asyncio.wait_for(stream_task, timeout=20)
        await keepalive.aclose()
        await fresh.aclose()

    async def _one(self, client: httpx.AsyncClient, kind: str, path: str, fresh: httpx.AsyncClient) -> None:
        t = self.now()
        for attempt in (1, 2):
            if attempt == 2:
                client = fresh  # the retry goes out on a new connection, as browsers do
            try:
                r = await client.get(path)
                color = r.headers.get("x-colorgate-color", "")
                self.records.append(Req(t, self.now() - t, kind, 200 <= r.status_code < 300, r.status_code, color, retried=attempt > 1))
                return
            except httpx.RemoteProtocolError as exc:
                # A reused keep-alive connection closed before any response (nginx closes
                # idle connections at a reload): HTTP lets clients retry an idempotent
                # request once on a new connection, as browsers do. Counted separately.
                if attempt == 1 and "without sending a response" in str(exc):
                    continue
                self.records.append(Req(t, self.now() - t, kind, False, 0, "", f"{type(exc).__name__}: {exc}"[:120], retried=attempt > 1))
                return
            except httpx.HTTPError as exc:
                self.records.append(Req(t, self.now() - t, kind, False, 0, "", f"{type(exc).__name__}: {exc}"[:120], retried=attempt > 1))
                return

    async def _stream(self, client: httpx.AsyncClient) -> None:
        last = self.now()
        try:
            async with client.stream("GET", "/api/stream?seconds=600", timeout=httpx.Timeout(15, read=10)) as r:
                self.stream.opened_color = r.headers.get("x-colorgate-color", "")
                async for line in r.aiter_lines():  # an event a second, so the stop flag is seen within ~1 s
                    if line.startswith("data:"):
                        self.stream.events += 1
                        self.stream.max_gap_s = max(self.stream.max_gap_s, self.now() - last)
                        last = self.now()
                    if self._stop_stream.is_set():
                        self.stream.closed_by_us = True
                        return
                self.stream.error = "the server ended the stream early"
        except httpx.HTTPError as exc:
            self.stream.error = f"{type(exc).__name__}: {exc}"[:200]


def first_response_from(load: Load, since: float, color: str) -> float | None:
    """Seconds from `since` until the first successful answer from `color` that was
    requested after `since`."""
    arrivals = [r.t + r.latency for r in load.records if r.t >= since and r.ok and r.color == color]
    return min(arrivals) - since if arrivals else None


def window(load: Load, start: float, end: float) -> dict:
    rs = [r for r in load.records if start <= r.t < end]
    failed = [r for r in rs if not r.ok]
    return {
        "requests": len(rs),
        "failed": len(failed),
        "rps": round(len(rs) / (end - start), 1) if end > start else 0,
        "retried_after_closed_keepalive": sum(1 for r in rs if r.retried),
        "failures_by_kind": {k: sum(1 for r in failed if r.kind == k) for k in sorted({r.kind for r in failed})},
        "failure_examples": sorted({r.error or f"HTTP {r.status}" for r in failed})[:5],
    }


def timeline(load: Load) -> list[dict]:
    """Per-second buckets: requests started, failed, median and p99 latency (ms)."""
    buckets: dict[int, list[Req]] = {}
    for r in load.records:
        buckets.setdefault(int(r.t), []).append(r)
    out = []
    for second in sorted(buckets):
        lat = sorted(r.latency for r in buckets[second])
        out.append({"t": second, "requests": len(lat), "failed": sum(1 for r in buckets[second] if not r.ok),
                    "p50_ms": round(lat[len(lat) // 2] * 1000, 1), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1)})
    return out


def longest_gap(load: Load, start: float, end: float) -> float:
    """Longest time without any successful answer arriving, inside [start, end)."""
    arrivals = sorted(r.t + r.latency for r in load.records if r.ok and start <= r.t < end)
    points = [start, *arrivals, end]
    return max(b - a for a, b in zip(points, points[1:]))


def ms(values: list[float]) -> dict:
    if not values:
        return {"median": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values) * 1000, 1), "max": round(max(values) * 1000, 1), "n": len(values)}


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
        "COLORGATE_DRAIN_SECONDS": "600",
        "COLORGATE_REPORTS_DIR": f"benchmarks/out/{run_id}-reports",
    }
    return config.load("development", environ={**os.environ, **env})


def run(args) -> dict:
    """Drive the phases while the load runs; compute every figure once it has stopped."""
    settings = bench_settings()
    events: list[tuple[float, str]] = []  # (time, "switch->green" ...), for latencies and the plot
    try:
        with runner.step("starting an isolated stack with both colors"):
            stack.up(settings)
            release.deploy(settings)  # both colors now run: blue v1, green v2
        versions = facts.running_versions(facts.service_states(settings))
        budget = 60 + args.switches * (args.pause + 1) + args.gated * 12 + args.baseline * 15 + 4 * args.settle
        load = Load(settings.https_url, tls.read_local_ca(settings), args.rps, max_seconds=budget, procs=args.procs)
        load.start()
        time.sleep(args.warmup)

        # 1. switches without gates
        phase1 = load.now()
        for _ in range(args.switches):
            to = other(edge.read_active(settings).color)
            events.append((load.now(), f"switch->{to}"))
            edge.write_active(settings, to, versions[to])
            time.sleep(args.pause)
        end1 = load.now()
        time.sleep(args.settle)

        # 2. full gated switches
        phase2 = load.now()
        gated, pre, post = [], [], []
        for _ in range(args.gated):
            to = other(edge.read_active(settings).color)
            t = load.now()
            events.append((t, f"gated->{to}"))
            record = release.switch(settings, to)
            gated.append(load.now() - t)
            pre.append(record.timings["pre_gates"])
            post.append(record.timings["post_gates"])
            time.sleep(args.pause)
        end2 = load.now()
        load.stop_stream()
        time.sleep(args.settle)

        # 3. rollback without gates
        phase3 = load.now()
        before = edge.read_active(settings).color
        events.append((load.now(), f"rollback->{other(before)}"))
        release.rollback(settings, use_gates=False)
        time.sleep(args.pause)
        end3 = load.now()
        time.sleep(args.settle)

        # 4. baseline: recreate the live backend in place
        phase4 = load.now()
        live = edge.read_active(settings).color
        env = stack.compose_env(settings, versions)
        for _ in range(args.baseline):
            events.append((load.now(), "recreate"))
            runner.run(stack.compose_cmd(settings, "up", "--detach", "--no-build", "--no-deps", "--force-recreate", f"backend_{live}"), env=env)
            time.sleep(args.pause + 2)
        end4 = load.now()
        load.stop()
    finally:
        if not args.keep:
            stack.destroy(settings)

    def latencies(prefix: str) -> list[float | None]:
        return [first_response_from(load, t, label.split("->")[1]) for t, label in events if label.startswith(prefix)]

    switch = latencies("switch->")
    back = latencies("rollback->")
    result = {
        "config": {"rps": args.rps, "switches": args.switches, "gated": args.gated, "baseline": args.baseline,
                   "client_processes": args.procs},
        "switch": {**ms([x for x in switch if x is not None]), "never_answered": switch.count(None),
                   "longest_gap_ms": round(longest_gap(load, phase1, end1) * 1000, 1), **window(load, phase1, end1)},
        "gated_switch": {"total_ms": ms(gated), "pre_gates_ms": ms(pre), "post_gates_ms": ms(post), **window(load, phase2, end2)},
        "rollback": {"latency_ms": round(back[0] * 1000, 1) if back and back[0] is not None else None, **window(load, phase3, end3)},
        "baseline_recreate": {"recreations": args.baseline, "longest_gap_ms": round(longest_gap(load, phase4, end4) * 1000, 1),
                              **window(load, phase4, end4)},
        "stream": {**asdict(load.stream), "survived": load.stream.survived},
        "load": {"requests": len(load.records), "failed": sum(1 for r in load.records if not r.ok),
                 "skipped_overloaded_client": load.skipped, "seconds": round(load.now(), 1)},
        "timeline": timeline(load),
    }
    if args.png:
        plot(load, events, [("switches", phase1, end1), ("gated", phase2, end2), ("rollback", phase3, end3),
                            ("baseline recreate", phase4, end4)], args.png)
    return result


def plot(load: Load, events, phases, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 5))
    ok = [r for r in load.records if r.ok]
    bad = [r for r in load.records if not r.ok]
    for color in ("blue", "green"):
        rs = [r for r in ok if r.color == color]
        ax.scatter([r.t for r in rs], [r.latency * 1000 for r in rs], s=2, color=color, alpha=0.4, label=f"ok ({color})")
    ax.scatter([r.t for r in bad], [max(r.latency * 1000, 1) for r in bad], s=12, color="red", marker="x", label=f"failed ({len(bad)})")
    for t, label in events:
        ax.axvline(t, color="green" if label.endswith("green") else "blue" if label.endswith("blue") else "black", lw=0.6, alpha=0.6)
    for name, start, end in phases:
        ax.axvspan(start, end, alpha=0.04, color="gray")
        ax.text(start, ax.get_ylim()[1] if ax.get_ylim()[1] > 1 else 1000, name, fontsize=8, va="top")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the load began")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("Colorgate: latency under load, switches marked (vertical lines)")
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict) -> str:
    s, g, rb, b = result["switch"], result["gated_switch"], result["rollback"], result["baseline_recreate"]
    lines = [
        f"load: {result['load']['requests']} requests in {result['load']['seconds']} s, "
        f"{result['load']['failed']} failed, {result['load']['skipped_overloaded_client']} skipped (client overloaded)",
        f"switch (no gates) x{s['n']}: {s['requests']} requests at {s['rps']}/s, {s['failed']} failed "
        f"({s['retried_after_closed_keepalive']} retried once after nginx closed an idle keep-alive connection); "
        f"first response from the new color after median {s['median']} ms, max {s['max']} ms; longest gap {s['longest_gap_ms']} ms",
        f"gated switch x{g['total_ms']['n']}: total median {g['total_ms']['median']} ms (max {g['total_ms']['max']}); "
        f"pre gates {g['pre_gates_ms']['median']} ms, post gates {g['post_gates_ms']['median']} ms; {g['failed']} failed of {g['requests']} "
        f"({g['retried_after_closed_keepalive']} retried)",
        f"rollback (no gates): first response from the old color after {rb['latency_ms']} ms; {rb['failed']} failed of {rb['requests']} "
        f"({rb['retried_after_closed_keepalive']} retried)",
        f"stream opened on {result['stream']['opened_color']}: {result['stream']['events']} events, "
        f"max gap {result['stream']['max_gap_s']:.1f} s, survived: {result['stream']['survived']} {result['stream']['error']}",
        f"baseline (compose up --force-recreate backend) x{b['recreations']}: {b['failed']} failed of {b['requests']} "
        f"at {b['rps']}/s ({b['retried_after_closed_keepalive']} retried); longest gap {b['longest_gap_ms']} ms; {b['failure_examples']}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--switches", type=int, default=20, help="switches without gates")
    p.add_argument("--gated", type=int, default=3, help="full gated switches")
    p.add_argument("--baseline", type=int, default=3, help="naive backend recreations")
    p.add_argument("--rps", type=int, default=200, help="requests a second")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between switches")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the first switch")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--png", help="write the latency plot to this PNG file")
    p.add_argument("--settle", type=float, default=3.0, help="seconds of load between phases")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--keep", action="store_true", help="leave the benchmark's stack running")
    args = p.parse_args(argv)
    for path in (args.json, args.png):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
