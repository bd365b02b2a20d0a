"""Every table, index and migration of the store, under one ``SCHEMA_VERSION``.

A migration is frozen once released: a database made by any earlier flwd is
upgraded by running the migrations after its version, in order, in one
transaction (:meth:`flwd_server.store.backend.Store.migrate`).  The SQL is
SQLite's spelling; PostgreSQL gets it translated (:mod:`.postgres_sql`).
"""

from __future__ import annotations

SCHEMA_VERSION = 9

# Finished runs, exactly as the partial index ``runs_finished_seq`` spells it: a query
# uses that index only if its WHERE says the same (a test checks it against RunStatus).
FINISHED_RUNS = "status NOT IN ('queued', 'running', 'awaiting_approval')"

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job TEXT NOT NULL,
        source TEXT NOT NULL,
        revision TEXT,
        args TEXT NOT NULL,
        status TEXT NOT NULL,
        profile TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        exit_code INTEGER,
        reason TEXT,
        plan_digest TEXT,
        plan TEXT NOT NULL,
        owner TEXT,
        affinity TEXT,
        pgid INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_status_seq ON runs(status, seq);
    CREATE INDEX runs_job_seq ON runs(job, seq);
    CREATE INDEX runs_owner ON runs(owner) WHERE status = 'running';
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT,
        type TEXT NOT NULL,
        ts REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX events_run_id ON events(run_id, id);
    CREATE TABLE idempotency (
        subject TEXT NOT NULL,
        key TEXT NOT NULL,
        body_hash TEXT NOT NULL,
        run_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (subject, key)
    );
    CREATE TABLE owners (
        owner TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    CREATE TABLE stream_tickets (
        digest TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        run_id TEXT,
        expires_at REAL NOT NULL
    );
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: the metric tables and the indexes that earlier versions created outside the
    # migrations (at every start, IF NOT EXISTS): a database made by them may have these.
    2: """
    CREATE TABLE IF NOT EXISTS metric_totals (
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (name, labels)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS process_gauges (
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (owner, name)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS events_counted ON events(id) WHERE type <> 'step.output';
    CREATE INDEX IF NOT EXISTS runs_finished_seq ON runs(seq) WHERE status NOT IN ('queued', 'running')
    """,
    # 3: a run's outputs (runs/outputs.py), JSON, set when it ends; NULL for none.
    3: """
    ALTER TABLE runs ADD COLUMN outputs TEXT
    """,
    # 4: run artifacts (store/artifacts.py): each run's files by path, and the content-addressed
    # files they name, counted, so pruning a run frees only the files no other run holds.
    4: """
    CREATE TABLE artifact_blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL
    );
    CREATE INDEX artifact_blobs_free ON artifact_blobs(sha256) WHERE refs <= 0;
    CREATE TABLE artifacts (
        run_id TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (run_id, path)
    );
    """,
    # 5: run callbacks: one delivery per run that asked for one (store/deliveries.py). ``state`` is
    # waiting (the run has not ended), pending (due at ``due_at``), delivered or failed (given up);
    # a process owns an attempt while ``lease_until`` is in the future.
    5: """
    CREATE TABLE callback_deliveries (
        run_id TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at REAL,
        lease_owner TEXT,
        lease_until REAL,
        last_status INTEGER,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX callback_deliveries_due ON callback_deliveries(due_at) WHERE state = 'pending'
    """,
    # 6: a stream ticket carries the read scopes of the token that asked for it (space-separated);
    # NULL (a ticket issued before) means plain runs:read.
    6: """
    ALTER TABLE stream_tickets ADD COLUMN scopes TEXT
    """,
    # 7: the audit trail (store/chain.py): each event's sha256 (hex) chaining it to the previous
    # event of its run (or of the events without a run); NULL for events stored before this
    # version.  And the chain over the runs' hashes at run.finished, in the order they finished
    # (never pruned).  Hex, not 32-byte BLOBs: measured cheaper to insert on SQLite, hexdigest included.
    7: """
    ALTER TABLE events ADD COLUMN hash TEXT;
    CREATE TABLE run_chain (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        run_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    # 8: a run awaiting approval (jobs' ``approval:``) is not finished: the partial index of finished runs
    # (retention's) leaves it out, and a query for awaiting runs (expiry) finds them by status.
    8: """
    DROP INDEX IF EXISTS runs_finished_seq;
    CREATE INDEX runs_finished_seq ON runs(seq) WHERE status NOT IN ('queued', 'running', 'awaiting_approval');
    CREATE INDEX runs_awaiting_approval ON runs(created_at) WHERE status = 'awaiting_approval'
    """,
    # 9: concurrency groups (store/queue.py): a run's rendered group and its limit (NULL: no group).
    # runs_group_status counts a group's queued and running runs; runs_queued covers the claim's and
    # the queue position's scans of the queue in order, without reading the rows; runs_queued_group
    # and runs_queued_plain let a claim step over a full group's runs (store/queue.py's pick).
    9: """
    ALTER TABLE runs ADD COLUMN concurrency_group TEXT;
    ALTER TABLE runs ADD COLUMN concurrency_limit INTEGER;
    CREATE INDEX runs_group_status ON runs(concurrency_group, status, seq) WHERE concurrency_group IS NOT NULL;
    CREATE INDEX runs_queued ON runs(seq, concurrency_group, concurrency_limit, affinity, id) WHERE status = 'queued';
    CREATE INDEX runs_queued_group ON runs(concurrency_group, seq) WHERE status = 'queued';
    CREATE INDEX runs_queued_plain ON runs(seq) WHERE status = 'queued' AND concurrency_group IS NULL
    """,
}


def statements(version: int) -> list[str]:
    """The statements of one migration, in order."""
    return [statement for statement in MIGRATIONS[version].split(";") if statement.strip()]
