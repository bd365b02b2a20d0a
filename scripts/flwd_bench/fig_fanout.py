"""Figure 3: many SSE clients following one busy run.

The run (``bench-ticker``) starts, waits for a "go" file, then prints
``tick N EPOCH`` every 10 ms, EPOCH being ``time.time()`` when the line is
printed.  The clients (a few processes, see ``fanout_client``) all open
``GET /runs/ID/events``; once every one of them has its response head, the
bench creates the go file.  Delivery latency of a line at one client =
arrival time at that client minus EPOCH, on the same machine's clock; each
client's replay of the history before "go" carries no tick lines.

flwd runs with its default settings (2 workers x 32 threads, the default
``sse.max_streams``): the goal is 1,000 clients on default settings.

Server CPU is the user+system time of gunicorn's master and workers (not the
job's process) over the window from "go" to the last client done, in percent
of one core; memory is the RSS of master and workers, sampled every 0.25 s,
and the peak reported.
"""

from __future__ import annotations

import array
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import procs
from .harness import LOOPBACK, exited, wait_for
from .jobsrc import BENCH_SOURCE
from .report import Goal, Row, summary

if TYPE_CHECKING:
    from .cli import Context

MB = 1024 * 1024
SCRIPTS = str(Path(__file__).resolve().parent.parent)


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    clients = ctx.opts.fanout_clients
    lines = ctx.opts.pick(500, 200)  # 5 s (quick: 2 s) of ticks
    # Issue 19's goal holds on flwd's default settings: no thread tuning here (--flwd-threads
    # still applies, through ctx.flwd, for a look at a tuned server).
    server = ctx.flwd("fanout")
    ws = ctx.ws
    client_list: list[tuple[Any, Path]] = []
    try:
        go, ready, timeout = start_ticker_clients(ctx, server, f"{server.name}-clients", clients, lines, client_list)
        client_procs = len(client_list)
        pids = server.server_pids()
        cpu0 = {pid: procs.cpu_seconds(pid) for pid in pids}
        began = time.monotonic()
        peak = procs.total_memory(pids)
        go.touch()
        deadline = began + timeout
        while not all(exited(proc) for proc, _ in client_list) and time.monotonic() < deadline:
            peak = max(peak, procs.total_memory(pids), key=lambda m: m.rss)
            time.sleep(0.25)
        window = time.monotonic() - began
        cpu_each = {pid: procs.cpu_seconds(pid) - cpu0[pid] for pid in pids}
        cpu = sum(cpu_each.values())
        end_memory = procs.total_memory(pids)
        for proc, _ in client_list:
            ws.stop(proc, timeout=5)
    finally:
        server.stop()
    counts, latencies, statuses = client_results(client_list, ready)
    ms = summary([1000 * v for v in latencies])
    complete = sum(c["finished"] for c in counts)
    # From "go" on: connecting (before the window) is not what the figure is about.
    client_cpu = sum(c["cpu_seconds"] for c in counts) - sum(r["cpu_seconds"] for r in ready)
    lines_min = min(c["lines_min"] for c in counts)
    rows = [
        Row(
            3,
            f"{clients:,} SSE clients: streams complete",
            complete,
            f"of {clients:,}",
            Goal(">=", clients),
            note=f"statuses {statuses}; lines per client min {lines_min} of {lines}",
        ),
        Row(3, "delivery latency p50", ms.get("p50"), "ms"),
        Row(3, "delivery latency p99", ms.get("p99"), "ms", Goal("<=", 50)),
        Row(3, "server CPU (master + workers)", 100 * cpu / window, "% of a core"),
        Row(3, "server RSS peak (master + workers)", peak.rss / MB, "MB"),
        Row(3, "bench's SSE clients CPU", 100 * client_cpu / window, "% of a core", note=f"{client_procs} processes"),
    ]
    details = {
        "clients": clients,
        "client_processes": client_procs,
        "lines": lines,
        "flwd_config": server.config,
        "statuses": statuses,
        "streams_complete": complete,
        "lines_per_client_min": lines_min,
        "latency_ms": ms,
        "window_seconds": window,
        "server_cpu_seconds": cpu,
        "server_cpu_seconds_per_process": {
            ("master" if i == 0 else f"worker {pid}"): round(v, 2) for i, (pid, v) in enumerate(cpu_each.items())
        },
        "server_rss_peak_bytes": peak.rss,
        "server_pss_peak_bytes": peak.pss,
        "server_rss_end_bytes": end_memory.rss,
        "client_cpu_seconds": client_cpu,
        "per_process": counts,
    }
    return rows, details


def start_ticker_clients(
    ctx: Context, server: Any, tag: str, clients: int, lines: int, client_list: list[tuple[Any, Path]]
) -> tuple[Path, list[dict[str, Any]], float]:
    """A ``bench-ticker`` run held at its go file, and ``clients`` SSE clients on it in a few processes, all connected.

    Returns the go file, the clients' ready records and the time they may take. ``client_list``
    gets each client process (and its output file) as it starts, so the caller stops them
    whatever happens. ``tag`` (unique per repetition: a go or ready file left by the last one
    would start this one early) names the files and logs.
    """
    ws = ctx.ws
    go = ws.path(f"{tag}.go")
    api = server.api()
    try:
        run = api.json(
            "POST",
            "/runs",
            {"job": "bench-ticker", "source": BENCH_SOURCE, "args": {"lines": lines, "go": str(go)}},
            expect=202,
        )["run"]
    finally:
        api.close()
    timeout = 120.0 + clients / 20 + lines * 0.05
    client_procs = max(1, min(4, os.cpu_count() or 1, math.ceil(clients / 100)))
    share = [clients // client_procs + (1 if i < clients % client_procs else 0) for i in range(client_procs)]
    for i, n in enumerate(share):
        out = ws.path(f"{tag}-{i}")
        args = [ctx.python, "-m", "flwd_bench.fanout_client", "--port", str(server.port), "--host", LOOPBACK]
        args += ["--path", f"/runs/{run['id']}/events", "--connections", str(n)]
        args += ["--out", str(out), "--timeout", str(timeout)]
        client_list.append((ws.spawn(args, log=f"{tag}-{i}.log", env={**os.environ, "PYTHONPATH": SCRIPTS}), out))

    def all_ready() -> bool:
        for proc, out in client_list:
            if exited(proc) and not out.with_suffix(".ready").exists():
                raise RuntimeError(f"an SSE client exited before connecting; see {tag}-N.log in the temp dir (--keep)")
        return all(out.with_suffix(".ready").exists() for _, out in client_list)

    wait_for(all_ready, 60 + clients / 10, f"{clients} SSE clients to connect", interval=0.1)
    return go, [json.loads(out.with_suffix(".ready").read_text()) for _, out in client_list], timeout


def client_results(
    client_list: list[tuple[Any, Path]], ready: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], array.array, dict[str, int]]:
    """What the SSE clients wrote: each finished client's counts, every delivery latency (s), the HTTP statuses."""
    latencies = array.array("d")
    counts = []
    for _, out in client_list:
        if out.with_suffix(".json").exists():
            counts.append(json.loads(out.with_suffix(".json").read_text()))
            latencies.frombytes(out.with_suffix(".lat").read_bytes())
    if not counts:
        raise RuntimeError("no SSE client finished; see the clients' logs in the temp dir (--keep)")
    statuses: dict[str, int] = {}
    for c in ready:
        for status, n in c["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return counts, latencies, statuses
