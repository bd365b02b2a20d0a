"""Migrations: worker processes migrating at once, and databases made by earlier versions of flwd."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from flwd_server.metrics import Metrics
from flwd_server.models import RunStatus
from flwd_server.store.schema import FINISHED_RUNS, SCHEMA_VERSION
from flwd_server.store.sqlite import SQLiteStore


def test_concurrent_migrations_of_one_database_all_succeed(tmp_path):
    path = tmp_path / "flwd.db"
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def migrate() -> None:
        barrier.wait()
        try:
            for _ in range(20):
                SQLiteStore(path).migrate()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    store = SQLiteStore(path)
    assert store.reader().execute("SELECT count(*) FROM meta WHERE key LIKE 'self_check%'").fetchone()[0] == 0
    store.close()


DATA = Path(__file__).parent / "data"


def layout(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every table and index with its columns: what a migration must leave, whatever its history."""
    out = {}
    for kind, name in conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"):
        pragma = "table_info" if kind == "table" else "index_info"
        out[f"{kind} {name}"] = [tuple(row) for row in conn.execute(f"PRAGMA {pragma}({name})")]
    return out


def test_a_database_made_by_flwd_0_1_0_upgrades_to_the_current_schema(tmp_path):
    """schema1-by-flwd-0.1.0.sql is the dump of a database flwd 0.1.0 made (schema version 1, with the
    metric tables it created outside the migrations) after one run of hello-world."""
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript((DATA / "schema1-by-flwd-0.1.0.sql").read_text())
    conn.close()
    store = SQLiteStore(old)
    assert store.migrate() == SCHEMA_VERSION
    fresh = SQLiteStore(tmp_path / "fresh.db")
    fresh.migrate()
    try:
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        assert layout(store.reader()) == layout(fresh.reader())
        runs, _ = store.list_runs()
        assert [(r.job, r.status.value) for r in runs] == [("hello-world", "succeeded")]
        assert [e.type for e in store.events_after(0, runs[0].id)][-1] == "run.finished"
        text = Metrics(store).exposition()  # the totals folded by 0.1.0 are kept, not counted again
        assert 'flwd_runs_finished_total{source="examples",job="hello-world",status="succeeded"} 1' in text
    finally:
        store.close()
        fresh.close()


def test_finished_runs_are_spelled_as_the_run_statuses_say():
    """The partial index on finished runs and the queries that use it share one text; it must name
    exactly the statuses that are not terminal."""
    unfinished = ", ".join(f"'{s.value}'" for s in RunStatus if not s.is_terminal)
    assert FINISHED_RUNS == f"status NOT IN ({unfinished})"


# What flwd 0.1.0 created outside its migrations, at every start (metrics.install_schema then).
SCHEMA1_EXTRAS = """
CREATE TABLE IF NOT EXISTS metric_totals (name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, labels)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS process_gauges (owner TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (owner, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_counted ON events(id) WHERE type <> 'step.output';
CREATE INDEX IF NOT EXISTS runs_finished_seq ON runs(seq) WHERE status NOT IN ('queued', 'running')
"""


def pg_layout(url: str) -> dict[str, list[tuple]]:
    import psycopg

    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, column_name"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        ).fetchall()
    return {"columns": columns, "indexes": indexes}


def test_a_postgres_database_made_by_flwd_0_1_0_upgrades_to_the_current_schema(postgres, postgres_url):
    import psycopg

    from flwd_server.store.postgres import PostgresStore
    from flwd_server.store.postgres_sql import translate
    from flwd_server.store.schema import statements

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in [*statements(1), *SCHEMA1_EXTRAS.split(";")]:
            conn.execute(translate(statement).replace("%%", "%"))
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1'), ('digest_key', 'ab')")
        conn.execute(
            "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, plan) "
            "VALUES ('r1', 'hello-world', 'examples', '{}', 'succeeded', 'secure', 'dev', 1, '{}')"
        )
    store = PostgresStore(postgres_url)
    fresh_url = postgres.create_database()
    fresh = PostgresStore(fresh_url)
    try:
        assert store.migrate() == SCHEMA_VERSION and fresh.migrate() == SCHEMA_VERSION
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        assert pg_layout(postgres_url) == pg_layout(fresh_url)
        assert [r.id for r in store.list_runs()[0]] == ["r1"]
    finally:
        store.close()
        fresh.close()
        postgres.drop_database(fresh_url)
