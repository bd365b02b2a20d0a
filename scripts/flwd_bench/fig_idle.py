"""Figure 5: idle memory, and ``GET /jobs`` with 2,000 jobs registered.

A fresh flwd with flwd's default shape (2 workers x 32 threads) and, besides
the bench's own jobs, a local source of 2,000 generated job files listed in
its config's ``sources:``.  Idle memory is the RSS of gunicorn's master and
workers after start-up (every worker forked and /healthz answered) and a
settle (at least 2 s, then until their RSS moves less than 0.5 MB in a
second), before any other request: PSS from ``/proc/PID/smaps_rollup`` (each page
shared by the forked workers split between the processes that map it: the memory
the server really holds; the goal), RSS beside it (shared pages counted once per
process).  Then ``GET /jobs`` is timed on one
keep-alive connection, sequentially: from writing the request to having read
the whole body.  The first requests (each worker scans the source once) are
kept in the percentiles: a user meets them after every restart.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from . import procs
from .jobsrc import write_many_source
from .report import Goal, Row, summary

if TYPE_CHECKING:
    from .cli import Context

MB = 1024 * 1024


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    count = 2000
    requests = ctx.opts.pick(200, 20)
    source = write_many_source(ctx.ws.path(ctx.ws.unique("many-source")), count)
    server = ctx.flwd("idle", sources=[source])
    try:
        server.settle(ctx.opts.pick(2.0, 0.5))
        pids = server.server_pids()
        idle_each = {pid: procs.memory(pid) for pid in pids}
        idle = sum(idle_each.values(), procs.Memory(0, 0))
        api = server.api()
        timings, listed, size = [], None, 0
        try:
            for _ in range(requests):
                began = time.perf_counter()
                status, body = api.get("/jobs")
                timings.append(time.perf_counter() - began)
                if status != 200:
                    raise RuntimeError(f"GET /jobs answered {status}: {body[:300]!r}")
                if listed is None:
                    listed, size = len(json.loads(body)["jobs"]), len(body)
        finally:
            api.close()
        after = procs.total_memory(pids)
    finally:
        server.stop()
    if listed is None or listed < count:
        raise RuntimeError(f"GET /jobs listed {listed} jobs, expected at least {count}")
    ms = summary([1000 * t for t in timings])
    rows = [
        Row(5, f"idle PSS, master + {len(pids) - 1} workers (shared pages split)", idle.pss / MB, "MB", Goal("<=", 80)),
        Row(5, "idle RSS (shared pages counted once per process)", idle.rss / MB, "MB"),
        Row(5, f"GET /jobs p50 ({listed:,} jobs, {size / 1024:.0f} KiB)", ms["p50"], "ms"),
        Row(5, f"GET /jobs p99 ({requests} requests)", ms["p99"], "ms"),
        Row(5, "RSS after the /jobs requests", after.rss / MB, "MB"),
    ]
    details = {
        "jobs": count,
        "listed": listed,
        "body_bytes": size,
        "requests": requests,
        "flwd_config": server.config,
        "idle_rss_bytes": idle.rss,
        "idle_pss_bytes": idle.pss,
        "idle_rss_bytes_per_process": {str(pid): m.rss for pid, m in idle_each.items()},
        "jobs_ms": ms,
        "rss_after_bytes": after.rss,
    }
    return rows, details
