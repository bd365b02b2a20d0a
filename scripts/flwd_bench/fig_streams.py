"""Figure 8: 1,000 event streams on flwd's default settings, and the API meanwhile.

flwd with its defaults (2 workers x 32 threads, no ``sse`` settings): an open
stream holds no thread, so every stream must be answered 200 whichever worker
the kernel gives it to.  The clients (``fanout_client``) all follow one
``bench-ticker`` run, as in figure 3; once every one has its response head,
the ticks start, and a prober times ``GET /healthz`` and ``POST /runs``
(``bench-true``), alternately, each on a new connection so that either worker
may answer, until the run is over.  Memory is the PSS of master and workers
(``/proc/PID/smaps_rollup``: shared pages counted once): idle after start-up,
then the peak with every stream open.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import procs
from .client import TOKEN
from .fig_fanout import client_results, start_ticker_clients
from .harness import LOOPBACK, exited
from .jobsrc import BENCH_SOURCE
from .report import Goal, Row, summary

if TYPE_CHECKING:
    from .cli import Context

MB = 1024 * 1024
SCRIPTS = str(Path(__file__).resolve().parent.parent)
TRUE_RUN = json.dumps({"job": "bench-true", "source": BENCH_SOURCE}).encode()


class Prober(threading.Thread):
    """Times ``GET /healthz`` and ``POST /runs`` in turn, one new connection each, every ``pause`` seconds."""

    def __init__(self, port: int, pause: float = 0.05) -> None:
        super().__init__(name="api-prober", daemon=True)
        self.port, self.pause = port, pause
        self.times: dict[str, list[float]] = {"healthz": [], "submit": []}
        self.statuses: dict[str, dict[int, int]] = {"healthz": {}, "submit": {}}
        self.stop = threading.Event()

    def _time(self, name: str, method: str, path: str, body: bytes | None) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        began = time.perf_counter()
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except OSError:
            status = 0
        finally:
            conn.close()
        self.times[name].append(time.perf_counter() - began)
        self.statuses[name][status] = self.statuses[name].get(status, 0) + 1

    def run(self) -> None:
        while not self.stop.is_set():
            self._time("healthz", "GET", "/healthz", None)
            self._time("submit", "POST", "/runs", TRUE_RUN)
            self.stop.wait(self.pause)


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    clients = ctx.opts.pick(1000, 200)
    lines = ctx.opts.pick(1000, 300)  # 10 s (quick: 3 s) of ticks
    server = ctx.flwd("streams")  # flwd's defaults: nothing about threads or streams
    ws = ctx.ws
    client_list: list[tuple[Any, Path]] = []
    prober = Prober(server.port)
    try:
        idle = server.settle(ctx.opts.pick(2.0, 0.5))
        go, ready, timeout = start_ticker_clients(ctx, server, f"{server.name}-streams", clients, lines, client_list)
        client_procs = len(client_list)
        pids = server.server_pids()
        open_memory = procs.total_memory(pids)
        cpu0 = procs.total_cpu(pids)
        began = time.monotonic()
        prober.start()
        go.touch()
        deadline = began + timeout
        peak = open_memory
        while not all(exited(proc) for proc, _ in client_list) and time.monotonic() < deadline:
            peak = max(peak, procs.total_memory(pids), key=lambda m: m.pss)
            time.sleep(0.25)
        window = time.monotonic() - began
        prober.stop.set()
        prober.join(30)
        cpu = procs.total_cpu(pids) - cpu0
        for proc, _ in client_list:
            ws.stop(proc, timeout=5)
    finally:
        prober.stop.set()
        server.stop()
    counts, latencies, statuses = client_results(client_list, ready)
    answered = statuses.get("200", 0)
    complete = sum(c["finished"] for c in counts)
    lines_min = min(c["lines_min"] for c in counts)
    delivery = summary([1000 * v for v in latencies])
    healthz = summary([1000 * t for t in prober.times["healthz"]])
    submit = summary([1000 * t for t in prober.times["submit"]])
    rows = [
        Row(8, f"{clients:,} streams on default settings: answered 200", answered, f"of {clients:,}",
            Goal(">=", clients), note=f"statuses {statuses}"),
        Row(8, "streams that carried every tick and ended", complete, f"of {clients:,}",
            note=f"lines per client min {lines_min} of {lines}"),
        Row(8, "delivery latency p99", delivery.get("p99"), "ms", Goal("<=", 50), note=f"p50 {delivery.get('p50')}"),
        Row(8, "GET /healthz p99 meanwhile", healthz.get("p99"), "ms", Goal("<=", 50),
            note=f"{len(prober.times['healthz'])} requests, statuses {prober.statuses['healthz']}"),
        Row(8, "POST /runs p99 meanwhile", submit.get("p99"), "ms", Goal("<=", 50),
            note=f"{len(prober.times['submit'])} requests, statuses {prober.statuses['submit']}"),
        Row(8, "idle PSS, master + workers", idle.pss / MB, "MB", Goal("<=", 80), note=f"RSS {idle.rss / MB:.0f} MB"),
        Row(8, f"PSS with {answered:,} streams open (peak)", peak.pss / MB, "MB",
            note=f"{(peak.pss - idle.pss) / max(1, answered) / 1024:.0f} KiB a stream over idle"),
        Row(8, "server CPU (master + workers)", 100 * cpu / window, "% of a core"),
    ]  # fmt: skip
    details = {
        "clients": clients,
        "client_processes": client_procs,
        "lines": lines,
        "flwd_config": server.config,
        "statuses": statuses,
        "streams_complete": complete,
        "lines_per_client_min": lines_min,
        "latency_ms": delivery,
        "healthz_ms": healthz,
        "submit_ms": submit,
        "probe_statuses": prober.statuses,
        "idle_pss_bytes": idle.pss,
        "idle_rss_bytes": idle.rss,
        "open_pss_bytes": open_memory.pss,
        "peak_pss_bytes": peak.pss,
        "window_seconds": window,
        "server_cpu_seconds": cpu,
        "per_process": counts,
    }
    return rows, details
