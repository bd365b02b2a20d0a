"""Figure 9: the queue with 10,000 and 100,000 queued runs: the claim, and the queue position.

A SQLite database is filled directly (one transaction): N queued runs of the concurrency
group ``deploy`` (limit 1), behind one running run of that group whose owner is this
bench process (alive, so no server declares it lost).  That is the claim's worst case:
every queued run is skipped.  Measured:

* the claim itself (``Store.claim``, one slot free), on the database without a server:
  it finds nothing to start among the N; then with one run of another group queued
  *after* the N: it must find that one (released again after each claim);
* a fresh flwd (flwd's default shape) on that database: ``GET /runs/ID`` of the last
  queued run (position N: the count before it is the cost), ``GET /runs`` (a page of 50
  queued runs, each with its position), timed on one keep-alive connection, and the
  servers' CPU time per request (from /proc utime + stime: on a busy machine wall time
  says more about the neighbours); and their CPU time per second while idle with the
  blocked queue (their dispatchers claim every second).

The same database on PostgreSQL (a throwaway cluster, tests/fixtures/pgcluster.py), without
a server: the claim both ways and the position of the last queued run, through the store.
Wall time here (the work is the database server's), p50 of repeated calls.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from . import procs
from .report import Row, summary

if TYPE_CHECKING:
    from pathlib import Path

    from .cli import Context


def _fill(path: Path, queued: int) -> tuple[str, str]:
    """The database with ``queued`` blocked runs; returns ``(owner, id of the last queued run)``."""
    from flwd_server.config import load_settings
    from flwd_server.store import open_store
    from flwd_server.store.owners import HOSTNAME, owner_id
    from flwd_server.store.queries import new_run_id

    store = open_store(load_settings(None, {"db_path": str(path)}, environ={}))
    store.migrate()
    owner = owner_id()
    store.register_owner(owner, HOSTNAME, os.getpid())
    store.close()
    plan = json.dumps({"job": {"name": "sleepy", "source": "bench", "steps": []}, "args": {}, "profile": "secure"})
    now = time.time()
    rows = [(new_run_id(), "running", owner, now)]
    rows += [(new_run_id(), "queued", None, now) for _ in range(queued)]
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, started_at, plan, "
            "owner, concurrency_group, concurrency_limit) "
            "VALUES (?, 'sleepy', 'bench', '{}', ?, 'secure', 'bench', ?, ?, ?, ?, 'deploy', 1)",
            [
                (run_id, status, created, created if status == "running" else None, plan, who)
                for run_id, status, who, created in rows
            ],
        )
    conn.execute("ANALYZE")
    conn.close()
    return owner, rows[-1][0]


def _claims(path: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Milliseconds of a claim that finds nothing, and of one that finds the run behind the queue."""
    from flwd_server.config import load_settings
    from flwd_server.store import open_store

    store = open_store(load_settings(None, {"db_path": str(path)}, environ={}))
    nothing, found = [], []
    try:
        for _ in range(repeat):
            began = time.perf_counter()
            assert store.claim("bench:claimer", 1, 32) == []
            nothing.append(1000 * (time.perf_counter() - began))
        plan = {"job": {"name": "other", "source": "bench", "steps": []}, "args": {}, "profile": "secure"}
        public = {"job": "other", "source": "bench", "revision": None, "args": {}, "profile": "secure", "digest": None}
        other, _ = store.create_run(plan=plan, public=public, submitted_by="bench", concurrency=("other", 1, "queue"))
        for _ in range(repeat):
            began = time.perf_counter()
            claimed = store.claim("bench:claimer", 1, 32)
            found.append(1000 * (time.perf_counter() - began))
            assert [c.run.id for c in claimed] == [other.id], claimed
            store.release_claims([other.id], "bench:claimer")
        store.request_cancel(other.id, "bench")  # the server started next must see only the blocked queue
    finally:
        store.close()
    return nothing, found


def _http(ctx: Context, path: Path, last: str, queued: int, requests: int) -> dict[str, Any]:
    server = ctx.flwd("queue", db_path=str(path))
    try:
        api = server.api()
        one, page = [], []
        pids = server.server_pids()
        cpu_before = procs.total_cpu(pids)
        try:
            for _ in range(requests):
                began = time.perf_counter()
                status, body = api.get(f"/runs/{last}")
                one.append(1000 * (time.perf_counter() - began))
                queue = json.loads(body)["run"]["queue"] if status == 200 else None
                if queue is None or queue["position"] != queued:
                    raise RuntimeError(f"GET /runs/{last}: {status} {body[:300]!r}")
                began = time.perf_counter()
                status, body = api.get("/runs?status=queued")
                page.append(1000 * (time.perf_counter() - began))
                if status != 200 or json.loads(body)["runs"][0]["queue"]["position"] != queued:
                    raise RuntimeError(f"GET /runs: {status} {body[:300]!r}")
        finally:
            api.close()
        cpu_each = 1000 * (procs.total_cpu(pids) - cpu_before) / (2 * requests)
        before, began = procs.total_cpu(pids), time.monotonic()
        time.sleep(ctx.opts.pick(5.0, 1.0))
        idle = (procs.total_cpu(pids) - before) / (time.monotonic() - began)
    finally:
        server.stop()
    return {"one_ms": summary(one), "page_ms": summary(page), "cpu_ms_per_request": cpu_each, "idle_cpu_per_s": idle}


_PG_FILL = (
    "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, plan, "
    "concurrency_group, concurrency_limit) SELECT substr(md5(i::text), 1, 26), 'sleepy', 'bench', '{}', 'queued', "
    "'secure', 'bench', %s, %s, 'deploy', 1 FROM generate_series(1, %s) AS i ORDER BY i"
)


def _postgres(ctx: Context, counts: tuple[int, ...], repeat: int) -> tuple[list[Row], dict[str, Any]]:
    import psycopg

    from flwd_bench.fig_multinode import _cluster
    from flwd_server.config import load_settings
    from flwd_server.store import open_store
    from flwd_server.store.owners import HOSTNAME, owner_id

    rows: list[Row] = []
    details: dict[str, Any] = {}
    with _cluster(ctx.ws.path("queue-postgres")) as cluster:
        for queued in counts:
            url = cluster.create_database(f"queue{queued}")
            store = open_store(load_settings(None, {"db_url": url}, environ={}))
            try:
                store.migrate()
                owner = owner_id()
                store.register_owner(owner, HOSTNAME, os.getpid())
                plan = json.dumps({"job": {"name": "sleepy", "source": "bench", "steps": []}, "args": {}})
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, "
                        "started_at, plan, owner, concurrency_group, concurrency_limit) VALUES ('running-one', "
                        "'sleepy', 'bench', '{}', 'running', 'secure', 'bench', %s, %s, %s, %s, 'deploy', 1)",
                        (time.time(), time.time(), plan, owner),
                    )
                    conn.execute(_PG_FILL, (time.time(), plan, queued))
                    conn.execute("VACUUM ANALYZE runs")
                last = store.reader().execute("SELECT id FROM runs WHERE status = 'queued' ORDER BY seq DESC LIMIT 1")
                run = store.get_run(last.fetchone()[0])
                nothing, found, position = [], [], []
                for _ in range(repeat):
                    began = time.perf_counter()
                    assert store.claim("bench:claimer", 1, 32) == []
                    nothing.append(1000 * (time.perf_counter() - began))
                    began = time.perf_counter()
                    queue = store.queue_of([run], 32)[0].queue
                    position.append(1000 * (time.perf_counter() - began))
                    assert queue is not None and queue["position"] == queued, queue
                public = {"job": "o", "source": "bench", "revision": None, "args": {}, "profile": "secure"}
                other, _ = store.create_run(
                    plan={"job": {"name": "o"}}, public=public, submitted_by="b", concurrency=("other", 1, "queue")
                )
                for _ in range(repeat):
                    began = time.perf_counter()
                    claimed = store.claim("bench:claimer", 1, 32)
                    found.append(1000 * (time.perf_counter() - began))
                    assert [c.run.id for c in claimed] == [other.id], claimed
                    store.release_claims([other.id], "bench:claimer")
            finally:
                store.close()
                cluster.drop_database(url)
            stats = {
                "claim_nothing_ms": summary(nothing),
                "claim_found_ms": summary(found),
                "position_ms": summary(position),
            }
            details[str(queued)] = stats
            rows += [
                Row(
                    9,
                    f"PostgreSQL claim, {queued:,} queued in a full group: p50",
                    stats["claim_nothing_ms"]["p50"],
                    "ms",
                ),
                Row(9, f"PostgreSQL claim of the one run behind {queued:,}: p50", stats["claim_found_ms"]["p50"], "ms"),
                Row(9, f"PostgreSQL queue position {queued:,}: p50", stats["position_ms"]["p50"], "ms"),
            ]
    return rows, details


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for queued in ctx.opts.pick((10_000, 100_000), (2_000, 10_000)):
        path = ctx.ws.path(f"queue-{queued}.db")
        _, last = _fill(path, queued)
        nothing, found = _claims(path, ctx.opts.pick(20, 5))
        http = _http(ctx, path, last, queued, ctx.opts.pick(50, 5))
        claim_none, claim_found = summary(nothing), summary(found)
        rows += [
            Row(9, f"claim, {queued:,} queued in a full group: p50", claim_none["p50"], "ms"),
            Row(9, f"claim of the one run behind {queued:,} skipped: p50", claim_found["p50"], "ms"),
            Row(9, f"GET /runs/ID at position {queued:,}: p50", http["one_ms"]["p50"], "ms"),
            Row(9, f"GET /runs?status=queued (50, {queued:,} in all): p50", http["page_ms"]["p50"], "ms"),
            Row(9, "  server CPU per request of the two above (mean)", http["cpu_ms_per_request"], "ms"),
            Row(9, f"server CPU while idle, {queued:,} blocked", 100 * http["idle_cpu_per_s"], "% of a core"),
        ]
        details[str(queued)] = {"claim_nothing_ms": claim_none, "claim_found_ms": claim_found, **http}
    pg_rows, details["postgres"] = _postgres(
        ctx, ctx.opts.pick((10_000, 100_000), (2_000, 10_000)), ctx.opts.pick(20, 5)
    )
    return rows + pg_rows, details
