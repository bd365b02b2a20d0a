"""Figure 6: completed runs/s with 1, 2 and 3 flwd nodes on one PostgreSQL.

The same load as figure 1 (``wrk`` posting ``bench-true`` from ``--clients``
connections for ``--duration`` seconds, then the queue drains and the
finished runs are counted), spread over the nodes: each node gets its share
of the connections.  Every node is a separate ``flwd :serve`` on its own
loopback port with its own data dir, ``--flwd-workers`` workers (default 1
here: on a 2-core machine three nodes of two workers each would only measure
the scheduler), and the same ``db_url``.  ``max_concurrent_runs`` is the
number of clients, as in figure 1, across all nodes.

The database is a throwaway cluster (tests/pgcluster.py) with ``fsync=on``
and ``synchronous_commit=off`` - commits do not wait for their WAL flush, as
SQLite's ``synchronous=normal`` (flwd's default) does not.  A SQLite node with
the same settings is measured first, for reference.  Each measurement gets a
fresh database and fresh nodes.

All of it runs on the one machine: the nodes, the database and wrk share its
cores, so more nodes add coordination, not CPU.  The figure shows what the
shared database costs and that throughput does not collapse as nodes are added;
on separate machines each node brings its own cores.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fig_runs import flwd_runs_per_second
from .report import Row

if TYPE_CHECKING:
    from .cli import Context

REPO = Path(__file__).resolve().parents[2]
NODE_COUNTS = (1, 2, 3)


def _cluster(root: Path) -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.pgcluster import throwaway_cluster

    return throwaway_cluster(root, durable=True)


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    clients, seconds = ctx.opts.clients, ctx.opts.duration
    workers = ctx.opts.flwd_workers or 1
    base = {"workers": workers, "limits": {"max_concurrent_runs": clients, "max_run_history": 1_000_000}}
    drain = max(60.0, 10.0 * seconds)
    details: dict[str, Any] = {"clients": clients, "seconds": seconds, "workers_per_node": workers, "nodes": {}}
    rows: list[Row] = []

    node = ctx.flwd("sqlite-1", **base)
    try:
        sqlite = flwd_runs_per_second([node], clients, seconds, drain_timeout=drain)
    finally:
        node.stop()
    details["sqlite"] = sqlite
    rows.append(_row("SQLite, 1 node", sqlite, clients, seconds, workers))

    with _cluster(ctx.ws.path("postgres")) as cluster:
        details["postgres"] = {"server_version": _server_version(cluster)}
        for count in NODE_COUNTS:
            url = cluster.create_database(f"bench{count}")
            nodes = []
            try:
                for index in range(count):
                    nodes.append(ctx.flwd(f"pg{count}-node{index + 1}", db_url=url, **base))
                result = flwd_runs_per_second(nodes, clients, seconds, drain_timeout=drain)
            finally:
                for started in nodes:
                    started.stop()
                cluster.drop_database(url)
            details["nodes"][str(count)] = result
            rows.append(_row(f"PostgreSQL, {count} node{'s' if count > 1 else ''}", result, clients, seconds, workers))
    return rows, details


def _row(label: str, result: dict[str, Any], clients: int, seconds: int, workers: int) -> Row:
    note = f"{clients} connections in all, {seconds} s, {workers} worker(s) per node"
    if result["drain_timed_out"]:
        note += ", queue did NOT drain"
    return Row(6, f"flwd completed runs/s, {label}", result["runs_per_second"], "runs/s", note=note)


def _server_version(cluster: Any) -> str:
    with cluster.admin() as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])
