"""The stack's own limit (figure 1): the least a Flask app on flwd's gunicorn can do per run.

``POST /runs`` checks the bearer token, parses the JSON body, stores the run's first
event (committed before the command starts, as flwd's run is durable before its 202),
runs ``sh -c true``, and stores five more events in one transaction: six events in
SQLite (WAL, ``synchronous=NORMAL``), two commits, one command.  No plan, no policy, no
queue, no streams: what flwd does beyond this is what it costs over the stack.

A measuring stick for the bench, not product code; ``STACK_DB`` names the database,
which the bench creates (``create_db``) before gunicorn starts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
import uuid

from flask import Flask, Response, request

TOKEN = "Bearer dev-token"
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL
);
"""
AFTER = ("run.started", "step.started", "step.finished", "run.finished", "run.ended")

app = Flask(__name__)
_local = threading.local()


def create_db(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.close()


def _db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(os.environ["STACK_DB"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def _store(conn: sqlite3.Connection, run_id: str, types: tuple[str, ...], job: str) -> None:
    now = time.time()
    rows = [(run_id, t, now, json.dumps({"run_id": run_id, "type": t, "job": job, "time": now})) for t in types]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT INTO events (run_id, type, time, data) VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@app.post("/runs")
def run() -> Response:
    if request.headers.get("Authorization") != TOKEN:
        return Response(status=401)
    job = str((request.get_json(silent=True) or {}).get("job", ""))
    run_id = uuid.uuid4().hex
    conn = _db()
    _store(conn, run_id, ("run.queued",), job)
    code = subprocess.run(["sh", "-c", "true"], stdin=subprocess.DEVNULL, check=False).returncode
    _store(conn, run_id, AFTER, job)
    return Response(json.dumps({"run": {"id": run_id, "exit_code": code}}), 200, mimetype="application/json")
