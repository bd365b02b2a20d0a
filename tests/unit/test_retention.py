"""limits.max_run_history: exact, prompt, and never touching queued or running runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwd_server.auth.bearer import SCOPES
from flwd_server.engine import Engine
from flwd_server.models import Principal
from flwd_server.planner import PlanRequest
from flwd_server.runs.runner import HOUSEKEEP_EVERY
from flwd_server.store import Store
from flwd_server.store.sqlite import SQLiteStore
from tests.fixtures.helpers import wait_until


def insert(store: Store, run_id: str, status: str, events: int = 3) -> None:
    def op(conn):
        conn.execute(
            "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, plan) VALUES (?, 'j', 's', '{}', ?, 'secure', 'me', ?, '{}')",
            (run_id, status, time.time()),
        )
        conn.executemany(
            "INSERT INTO events(run_id, type, ts, data) VALUES (?, 'step.output', 1, ?)",
            [(run_id, json.dumps({"i": i})) for i in range(events)],
        )
        conn.execute(
            "INSERT INTO idempotency(subject, key, body_hash, run_id, created_at) VALUES ('me', ?, 'h', ?, 1)",
            (run_id, run_id),
        )

    store.write(op)


def test_prune_keeps_the_newest_finished_runs_and_every_queued_or_running_one(tmp_path: Path):
    store = SQLiteStore(tmp_path / "flwd.db")
    store.migrate()
    try:
        insert(store, "old-queued", "queued")
        insert(store, "old-running", "running")
        for i in range(10):
            insert(store, f"done-{i}", ["succeeded", "failed", "cancelled", "lost", "rejected", "timed_out"][i % 6])
        insert(store, "new-queued", "queued")
        assert store.prune(4) == 6
        conn = store.reader()
        kept = {r[0] for r in conn.execute("SELECT id FROM runs")}
        assert kept == {"old-queued", "old-running", "new-queued", "done-6", "done-7", "done-8", "done-9"}
        assert {r[0] for r in conn.execute("SELECT DISTINCT run_id FROM events WHERE run_id IS NOT NULL")} == kept
        (pruned,) = conn.execute("SELECT data FROM events WHERE type = 'runs.pruned'").fetchone()  # the audit trail's
        assert [run["id"] for run in json.loads(pruned)["runs"]] == [f"done-{i}" for i in range(6)]
        assert {r[0] for r in conn.execute("SELECT run_id FROM idempotency")} == kept
        assert store.prune(4) == 0  # nothing due: nothing deleted
    finally:
        store.close()


def test_history_is_pruned_as_soon_as_runs_end_not_at_the_next_housekeeping(make_settings):
    engine = Engine(
        make_settings(**{"limits.max_run_history": 5, "limits.max_concurrent_runs": 4, "sse.poll_interval": 0.01})
    )
    principal = Principal("test", frozenset(SCOPES))
    try:
        started = time.monotonic()
        ids = [engine.submit(PlanRequest(job="noop", args={}), principal)[0].id for _ in range(12)]

        def settled() -> bool:
            runs, _ = engine.runs(limit=100)
            return all(r.status.is_terminal for r in runs) and len(runs) == 5

        wait_until(settled, 8, 0.02, "5 finished runs left")
        assert time.monotonic() - started < HOUSEKEEP_EVERY, "pruned only by the periodic housekeeping"
        runs, _ = engine.runs(limit=100)
        assert [r.id for r in runs] == list(reversed(ids[-5:]))
        orphans = (
            engine.store.reader()
            .execute("SELECT count(*) FROM events WHERE run_id IS NOT NULL AND run_id NOT IN (SELECT id FROM runs)")
            .fetchone()[0]
        )
        assert orphans == 0
    finally:
        engine.close(grace=0)
