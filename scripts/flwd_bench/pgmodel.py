"""Figure 6's model: what one run costs PostgreSQL, and the runs/s at which one PostgreSQL saturates.

Two cores cannot show several nodes scaling (the nodes, the database and wrk share
them), so the figure measures the database's own cost on one node and computes
where it would run out:

* **CPU**: user+system time of the postmaster and every process under it (backends,
  WAL writer, checkpointer, autovacuum...) from ``/proc``, plus the postmaster's
  children's time (backends that exited in the window), over figure 1's load and
  drain, less the rate measured with the node connected and idle just before (its
  pollers, the background processes) over the same time, divided by the runs
  completed and by the events they stored;
* from PostgreSQL's own statistics: commits (``pg_stat_database.xact_commit``), the
  time backends spent executing statements (``active_time``, which includes waiting
  for a lock), and WAL written (``pg_stat_wal.wal_bytes``), per run.

Saturation = 1,000 ms / (database CPU ms per run) runs/s for each core the database
has.  It assumes the work spreads over the cores; flwd serialises writes across nodes
(one advisory lock per write transaction: docs/multinode.rst), which caps it earlier if
the lock is held longer than the CPU time per run, so the figure is an upper bound.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import procs


def _postmaster(cluster: Any) -> int:
    return int(Path(cluster.data, "postmaster.pid").read_text().split()[0])


def snapshot(cluster: Any, url: str) -> dict[str, Any]:
    """The database's counters now: CPU per process, commits, active time, WAL bytes."""
    import psycopg

    root = _postmaster(cluster)
    pids = [root, *procs.descendants(root)]
    with psycopg.connect(url, autocommit=True) as conn:
        commits, active_ms = conn.execute(
            "SELECT xact_commit, active_time FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        wal = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()[0]
    return {
        "at": time.monotonic(),
        "cpu": {pid: procs.cpu_seconds(pid) for pid in pids},
        "children_cpu": procs.children_cpu_seconds(root),
        "commits": int(commits),
        "active_ms": float(active_ms or 0.0),
        "wal_bytes": int(wal),
    }


def events_stored(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def _cpu(before: dict[str, Any], after: dict[str, Any]) -> float:
    cpu = sum(v - before["cpu"].get(pid, 0.0) for pid, v in after["cpu"].items())
    return cpu + after["children_cpu"] - before["children_cpu"]


def model(
    idle: dict[str, Any], before: dict[str, Any], after: dict[str, Any], runs: int, events: int, cores: int
) -> dict[str, Any]:
    """Per-run and per-event costs between ``before`` and ``after``, and the saturation they imply.

    ``idle`` to ``before`` is the node connected and idle: its rate (the node's pollers,
    PostgreSQL's background processes) is taken off the loaded window, so the cost per
    run is what each run adds, not the fixed cost spread over however many runs there were."""
    idle_rate = _cpu(idle, before) / max(before["at"] - idle["at"], 1e-3)
    gross = _cpu(before, after)
    cpu = max(gross - idle_rate * (after["at"] - before["at"]), 0.0)
    out: dict[str, Any] = {
        "runs": runs,
        "events": events,
        "idle_cpu_cores": idle_rate,
        "database_cpu_seconds_gross": gross,
        "database_cpu_seconds": cpu,
        "commits": after["commits"] - before["commits"],
        "active_ms": after["active_ms"] - before["active_ms"],
        "wal_bytes": after["wal_bytes"] - before["wal_bytes"],
        "database_cores": cores,
    }
    if not runs or cpu <= 0:
        return out
    per_run_ms = 1000 * cpu / runs
    per_core = 1000 / per_run_ms
    out.update(
        cpu_ms_per_run=per_run_ms,
        cpu_us_per_event=1e6 * cpu / events if events else None,
        commits_per_run=out["commits"] / runs,
        active_ms_per_run=out["active_ms"] / runs,
        wal_bytes_per_run=out["wal_bytes"] / runs,
        saturation_runs_per_second_per_core=per_core,
        saturation_runs_per_second=per_core * cores,
        gross_cpu_ms_per_run=1000 * gross / runs,
        calculation=(
            f"PostgreSQL CPU {gross:.2f} s - idle {idle_rate:.3f} cores x {after['at'] - before['at']:.1f} s "
            f"= {cpu:.2f} s for {runs} runs ({events} events) = {per_run_ms:.3f} ms/run "
            f"({1e6 * cpu / max(events, 1):.0f} us/event); 1000 ms/s / {per_run_ms:.3f} ms/run = "
            f"{per_core:,.0f} runs/s per database core; x {cores} cores = {per_core * cores:,.0f} runs/s"
        ),
    )
    return out
