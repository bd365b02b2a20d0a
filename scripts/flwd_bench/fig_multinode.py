"""Figure 6: completed runs/s with 1, 2 and 3 flwd nodes on one PostgreSQL.

The same load as figure 1 (``wrk`` posting ``bench-true`` from ``--clients``
connections for ``--duration`` seconds, then the queue drains and the
finished runs are counted), spread over the nodes: each node gets its share
of the connections.  Every node is a separate ``flwd :serve`` on its own
loopback port with its own data dir, ``--flwd-workers`` workers (default 1
here: on a 2-core machine three nodes of two workers each would only measure
the scheduler), and the same ``db_url``.  ``max_concurrent_runs`` is the
number of clients, as in figure 1, across all nodes.

The database is a throwaway cluster (tests/fixtures/pgcluster.py) with ``fsync=on``
and ``synchronous_commit=off`` - commits do not wait for their WAL flush, as
SQLite's ``synchronous=normal`` (flwd's default) does not.  A SQLite node with
the same settings is measured first, for reference.  Each measurement gets a
fresh database and fresh nodes.

With two nodes the figure also measures how fast an event written on one node
reaches a stream on another: node 2 follows ``GET /events``, the bench submits
runs to node 1 one after another, and each ``run.queued`` event (written by
node 1's process that took the POST) is timed from its ``time`` (taken before
its transaction commits) to its arrival at the client.  The issue's goal: within
100 ms.

All of it runs on the one machine: the nodes, the database and wrk share its
cores, so more nodes add coordination, not CPU.  The figure shows what the
shared database costs and that throughput does not collapse as nodes are added;
on separate machines each node brings its own cores.  So on one node the figure
also measures what each run costs the database and computes the runs/s at which
one PostgreSQL saturates (``pgmodel``), printing the calculation.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import pgmodel
from .client import TOKEN
from .fig_runs import flwd_runs_per_second
from .harness import LOOPBACK, FlwdServer
from .jobsrc import BENCH_SOURCE
from .report import Goal, Row

if TYPE_CHECKING:
    from .cli import Context

REPO = Path(__file__).resolve().parents[2]
NODE_COUNTS = (1, 2, 3)


def _cluster(root: Path) -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.fixtures.pgcluster import throwaway_cluster

    return throwaway_cluster(root, durable=True)


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    clients, seconds = ctx.opts.clients, ctx.opts.duration
    workers = ctx.opts.flwd_workers or 1
    base = {"workers": workers, "limits": {"max_concurrent_runs": clients, "max_run_history": 1_000_000}}
    drain = max(60.0, 10.0 * seconds)
    cores = os.cpu_count() or 1
    details: dict[str, Any] = {"clients": clients, "seconds": seconds, "workers_per_node": workers, "nodes": {}}
    rows: list[Row] = []

    node = ctx.flwd("sqlite-1", **base)
    try:
        sqlite = flwd_runs_per_second([node], clients, seconds, drain_timeout=drain)
    finally:
        node.stop()
    details["sqlite"] = sqlite
    rows.append(_row("SQLite, 1 node", sqlite, clients, seconds, workers))

    with _cluster(ctx.ws.path(ctx.ws.unique("postgres"))) as cluster:
        details["postgres"] = {"server_version": _server_version(cluster)}
        for count in NODE_COUNTS:
            url = cluster.create_database(f"bench{count}")
            nodes = []
            idle = before = None
            try:
                for index in range(count):
                    nodes.append(ctx.flwd(f"pg{count}-node{index + 1}", db_url=url, **base))
                if count == 2:
                    latency = cross_node_latency(nodes[0], nodes[1], ctx.opts.pick(200, 40))
                    details["cross_node"] = latency
                    rows += [
                        Row(6, "event written on node 1 -> stream on node 2, p50", latency["p50_ms"], "ms"),
                        Row(
                            6,
                            "event written on node 1 -> stream on node 2, p99",
                            latency["p99_ms"],
                            "ms",
                            Goal("<=", 100),
                            note=f"{latency['events']} events",
                        ),
                    ]
                if count == 1:
                    idle = pgmodel.snapshot(cluster, url)
                    time.sleep(ctx.opts.pick(3.0, 1.0))  # the idle node's own rate, taken off below
                    before = pgmodel.snapshot(cluster, url)
                result = flwd_runs_per_second(nodes, clients, seconds, drain_timeout=drain)
            finally:
                for started in nodes:
                    started.stop()
            try:
                if (
                    idle is not None and before is not None
                ):  # after the nodes stopped: their backends have flushed their statistics
                    cost = pgmodel.model(
                        idle,
                        before,
                        pgmodel.snapshot(cluster, url),
                        result["finished"],
                        pgmodel.events_stored(url),
                        cores,
                    )
                    details["model"] = cost
                    rows += _model_rows(cost)
            finally:
                cluster.drop_database(url)
            details["nodes"][str(count)] = result
            rows.append(_row(f"PostgreSQL, {count} node{'s' if count > 1 else ''}", result, clients, seconds, workers))
    return rows, details


def _model_rows(cost: dict[str, Any]) -> list[Row]:
    """The database's cost per run on one node and the runs/s at which it saturates (pgmodel)."""
    if "calculation" in cost:
        print(f"[bench] figure 6 model: {cost['calculation']}", file=sys.stderr, flush=True)
    return [
        Row(6, "PostgreSQL CPU per run (1 node, all its processes)", cost.get("cpu_ms_per_run"), "ms"),
        Row(6, "PostgreSQL CPU per event", cost.get("cpu_us_per_event"), "us"),
        Row(6, "PostgreSQL commits per run", cost.get("commits_per_run"), ""),
        Row(6, "PostgreSQL statement time per run (active_time)", cost.get("active_ms_per_run"), "ms"),
        Row(6, "PostgreSQL WAL per run", (cost.get("wal_bytes_per_run") or 0) / 1024 or None, "KiB"),
        Row(
            6,
            "runs/s at which one PostgreSQL saturates, per core (model)",
            cost.get("saturation_runs_per_second_per_core"),
            "runs/s",
            note=cost.get("calculation", ""),
        ),
    ]


def _row(label: str, result: dict[str, Any], clients: int, seconds: int, workers: int) -> Row:
    note = f"{clients} connections in all, {seconds} s, {workers} worker(s) per node"
    if result["drain_timed_out"]:
        note += ", queue did NOT drain"
    return Row(6, f"flwd completed runs/s, {label}", result["runs_per_second"], "runs/s", note=note)


def cross_node_latency(writer: FlwdServer, follower: FlwdServer, runs: int) -> dict[str, Any]:
    """Submit ``runs`` runs to ``writer`` one by one; time each ``run.queued`` event to its arrival on ``follower``'s stream."""
    arrivals: dict[str, tuple[float, float]] = {}  # run id -> (written, arrived)
    opened = threading.Event()
    conn = http.client.HTTPConnection(LOOPBACK, follower.port, timeout=60)
    conn.request("GET", "/events?after=0", headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET /events on {follower.url}: {response.status}")

    def follow() -> None:
        opened.set()
        event = None
        try:
            for raw in response:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: ") and event == "run.queued":
                    arrived = time.time()
                    data = json.loads(line[6:])
                    written = dt.datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
                    arrivals[data["run_id"]] = (written, arrived)
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            return  # the bench closed the stream (http.client may then find its file gone: AttributeError)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    opened.wait(10)
    api = writer.api()
    mine = []
    try:
        for _ in range(runs):
            mine.append(
                api.json("POST", "/runs", {"job": "bench-echo", "source": BENCH_SOURCE}, expect=202)["run"]["id"]
            )
            time.sleep(0.02)  # one at a time, as a person or a CI job submits: latency, not load
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(r in arrivals for r in mine):
            time.sleep(0.02)
    finally:
        api.close()
        with_sock = conn.sock
        if with_sock is not None:
            try:
                with_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        conn.close()
        reader.join(10)
    delays = sorted(1000 * (arrivals[r][1] - arrivals[r][0]) for r in mine if r in arrivals)
    if not delays:
        raise RuntimeError("no run.queued event of node 1 reached node 2's stream")
    return {
        "events": len(delays),
        "missing": len(mine) - len(delays),
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
    }


def _server_version(cluster: Any) -> str:
    with cluster.admin() as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])
