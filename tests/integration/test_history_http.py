"""limits.max_run_history on a real server: after 300 runs, 100 are kept, with only their events."""

from __future__ import annotations

import sqlite3

import requests

from tests.fixtures.helpers import wait_until


def test_history_keeps_the_newest_hundred_runs_and_only_their_events(start_server):
    server = start_server({"workers": 2, "threads": 8, "limits": {"max_run_history": 100, "max_concurrent_runs": 4}})
    session = requests.Session()
    session.headers["Authorization"] = "Bearer dev-token"
    submitted = []
    for _ in range(300):
        response = session.post(server.url + "/runs", json={"job": "noop"}, timeout=10)
        assert response.status_code == 202, response.text
        submitted.append(response.json()["run"]["id"])
    db = sqlite3.connect(server.data_dir / "flwd.db", timeout=10)
    try:

        def settled() -> bool:
            statuses = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
            return statuses == {"succeeded": 100}

        # The last run ends a few seconds after the last submit; pruning follows each end at once.
        wait_until(settled, 60, 0.05, "exactly 100 finished runs")
        kept = [r[0] for r in db.execute("SELECT id FROM runs ORDER BY seq")]
        assert kept == submitted[-100:]
        with_events = {r[0] for r in db.execute("SELECT DISTINCT run_id FROM events WHERE run_id IS NOT NULL")}
        assert with_events == set(kept)
        assert db.execute("SELECT count(*) FROM events WHERE run_id IS NOT NULL").fetchone()[0] >= 100 * 5
        assert server.get(f"/runs/{submitted[0]}").status_code == 404
        assert server.get(f"/runs/{submitted[-1]}").json()["run"]["status"] == "succeeded"
    finally:
        db.close()
