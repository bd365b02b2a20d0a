"""What only the PostgreSQL store has: the dialect, event ids in commit order across processes,
claims with FOR UPDATE SKIP LOCKED, LISTEN/NOTIFY wake-ups, a database that goes away, the reader pool."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time

import pytest

from flwd_server.errors import StorageError
from flwd_server.events.hub import EventHub
from flwd_server.models import RunStatus
from flwd_server.store import open_store, postgres_pool
from flwd_server.store.postgres import CHANNEL, LOCK_CLASS, PostgresStore
from flwd_server.store.postgres_pool import PooledReader, ReaderPool
from flwd_server.store.postgres_sql import translate
from tests.fixtures.helpers import results_of_processes, wait_until
from tests.unit.test_store import _plan, _public, queue_runs


@pytest.fixture
def pg(postgres_url):
    s = PostgresStore(postgres_url)
    s.migrate()
    yield s
    s.close()


def test_sqlite_spellings_are_translated_once_per_statement():
    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'") == "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'"
    assert translate("BEGIN IMMEDIATE") == "BEGIN"
    assert (
        translate("SELECT id FROM events INDEXED BY events_counted WHERE id > ?")
        == "SELECT id FROM events WHERE id > %s"
    )
    ddl = translate(
        "CREATE TABLE x (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, n INTEGER, PRIMARY KEY (a)) WITHOUT ROWID"
    )
    assert ddl == "CREATE TABLE x (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, n BIGINT, PRIMARY KEY (a))"
    assert translate("SELECT CAST(x AS INTEGER)") == "SELECT CAST(x AS INTEGER)"  # types change in DDL only


def test_the_url_is_never_shown_with_its_password(make_settings):
    assert make_settings(db_url="postgresql://u:pw@h/d").database_label == "postgresql://u:***@h/d"


def test_settings_pick_the_backend_and_refuse_a_mix(make_settings, postgres_url):
    from flwd_server.errors import ConfigError

    store = open_store(make_settings(db_url=postgres_url))
    assert isinstance(store, PostgresStore)
    store.close()
    with pytest.raises(ConfigError, match="db_url"):
        make_settings(db_url="mysql://x/y")
    with pytest.raises(ConfigError, match="not both"):
        make_settings(db_url=postgres_url, db_path="/tmp/x.db")


def test_timestamps_keep_their_precision(pg):
    """REAL is 4 bytes in PostgreSQL: the schema must say DOUBLE PRECISION."""
    run, _ = pg.create_run(plan=_plan(), public=_public(), submitted_by="t")
    assert abs(pg.get_run(run.id).created_at - run.created_at) < 1e-5
    kinds = dict(
        pg.reader()
        .execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'events'")
        .fetchall()
    )
    assert kinds["ts"] == "double precision" and kinds["id"] == "bigint"


def _emitter(url: str, name: str, count: int) -> None:
    store = PostgresStore(url)
    for i in range(count):
        store.emit(None, "tick", {"from": name, "i": i})
        if i % 7 == 0:
            store.flush()  # many small transactions, interleaved with the other processes'
    store.close()


def test_a_follower_asking_for_ids_above_the_last_never_misses_one_across_processes(pg, postgres_url):
    """Three processes write at once; a reader that always asks ``id > last`` sees every event.

    Without the write lock, ids are taken at insert and become visible at
    commit, so a later id can be seen before an earlier one commits: the
    follower would skip it for good.
    """
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_emitter, args=(postgres_url, f"p{i}", 400)) for i in range(3)]
    for p in procs:
        p.start()
    seen: list[int] = []
    last = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fresh = pg.events_after(last, limit=50)
        seen.extend(e.id for e in fresh)
        if fresh:
            last = fresh[-1].id
        elif not any(p.is_alive() for p in procs):
            break  # every writer has committed and exited, and nothing is above ``last``
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    everything = [e.id for e in pg.events_after(0, limit=10000)]
    assert len(everything) == 1200
    assert seen == everything  # nothing skipped, nothing twice, in order


def test_a_claim_skips_a_queued_run_another_transaction_holds_instead_of_waiting(pg):
    ids = queue_runs(pg, 3)
    holder = pg.connect()
    holder.execute("BEGIN")
    holder.execute("SELECT id FROM runs WHERE id = ? FOR UPDATE", (ids[0],))  # e.g. a cancel in progress
    started = time.monotonic()
    claimed = pg.claim("me", 1, 10)
    assert time.monotonic() - started < 5
    assert [c.run.id for c in claimed] == [ids[1]]  # the oldest one nobody holds
    holder.execute("ROLLBACK")
    holder.close()
    assert [c.run.id for c in pg.claim("me", 5, 10)] == [ids[0], ids[2]]  # queue order kept


def _bounded_claimer(url: str, owner: str, limit: int, results) -> None:
    store = PostgresStore(url)
    worst = 0
    while True:
        claimed = store.claim(owner, 2, limit)
        if not claimed:
            if store.count_runs().get("queued", 0) == 0:
                break
            continue
        worst = max(worst, store.count_runs().get("running", 0))
        for item in claimed:
            store.finish_run(item.run.id, RunStatus.SUCCEEDED, exit_code=0)
    results.put(worst)
    store.close()


def test_max_running_holds_across_four_processes_claiming_at_once(pg, postgres_url):
    queue_runs(pg, 200)
    worst = max(results_of_processes(_bounded_claimer, [(postgres_url, f"p{i}", 3) for i in range(4)], timeout=120))
    assert 1 <= worst <= 3
    assert pg.count_runs() == {"succeeded": 200}


def test_a_cancel_racing_claims_either_wins_or_becomes_a_cancel_request(pg):
    ids = queue_runs(pg, 60)
    claimed: list[str] = []
    stop = threading.Event()

    def claim_loop():
        while not stop.is_set():
            claimed.extend(c.run.id for c in pg.claim("me", 3, 1000))

    thread = threading.Thread(target=claim_loop)
    thread.start()
    for run_id in ids:
        pg.request_cancel(run_id, "tester")
    stop.set()
    thread.join()
    for run_id in ids:
        run = pg.get_run(run_id)
        if run_id in claimed:  # claimed first: still running, with a cancel request for its owner
            assert run.status is RunStatus.RUNNING
            assert pg.cancel_requested([run_id]) == {run_id}
        else:
            assert run.status is RunStatus.CANCELLED


def test_another_node_s_commit_wakes_the_hub_through_notify(pg, postgres_url):
    hub = EventHub(pg, poll_interval=30.0)  # the fallback poll alone would take 30 s
    hub.start()
    wait_until(lambda: hub.polls >= 1, 10, message="the poller to start")
    other = PostgresStore(postgres_url)  # another node: no wake-up socket in common, only the database
    try:
        for expected in range(1, 6):
            started = time.monotonic()
            other.emit("r", "step.output", {"n": expected})
            other.flush()
            wait_until(lambda expected=expected: hub.last_id >= expected, 5, 0.002, message="the other node's event")
            assert time.monotonic() - started < 2  # woken by NOTIFY (typically a few ms), far below 30 s
        listening = (
            pg.reader()
            .execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flwd-listen'")
            .fetchone()[0]
        )
        assert listening == 1
        assert CHANNEL == "flwd_events"
    finally:
        other.close()
        hub.close()


def test_the_hub_reconnects_when_its_connections_are_killed_and_says_so_without_a_traceback(pg, postgres_url, caplog):
    hub = EventHub(pg, poll_interval=0.05)
    hub.start()
    wait_until(
        lambda: (
            pg.reader()
            .execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flwd-listen'")
            .fetchone()[0]
            == 1
        ),
        10,
        message="LISTEN",
    )
    killer = PostgresStore(postgres_url)
    # Every session of this database but the killer's: the LISTEN connection and the pooled readers.
    killer.reader().execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    killer.close()
    other = PostgresStore(postgres_url)
    try:
        other.emit("r", "after.kill", {})
        other.flush()
        wait_until(lambda: hub.last_id >= 1, 10, message="the event after the LISTEN connection died")
        wait_until(
            lambda: (
                pg.reader()
                .execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flwd-listen'")
                .fetchone()[0]
                == 1
            ),
            10,
            message="LISTEN again",
        )
    finally:
        other.close()
        hub.close()
    assert not [r for r in caplog.records if r.name == "flwd.events" and r.exc_info]  # one line, never a traceback


def test_a_database_that_goes_away_gives_503_problems_and_comes_back(postgres):
    url = postgres.create_database()
    store = PostgresStore(url)
    store.migrate()
    run, _ = store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    with postgres.admin() as admin:
        admin.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{url.rsplit('/', 1)[1]}'"
        )
    # Every pooled and writer connection was cut: a read is repeated once on a new connection...
    assert store.get_run(run.id).status is RunStatus.QUEUED
    try:
        store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    except StorageError:
        pass  # the writer's connection was cut under it: one failure, then a new connection
    store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    assert len(store.list_runs()[0]) >= 2
    store.close()
    # ...and a server that is not there at all is a 503 problem, not a 500.
    postgres.drop_database(url)
    gone = PostgresStore(url)
    with pytest.raises(StorageError) as raised:
        gone.get_run(run.id)
    assert raised.value.status == 503 and "cannot be read" in raised.value.detail
    gone.close()


def test_heartbeats_are_written_in_the_database_clock(pg):
    pg.register_owner("elsewhere:1:1", "elsewhere", 1)
    conn = pg.connect()
    skew = pg._clock_skew(conn)
    conn.close()
    assert abs(skew) < 1.0  # one machine: the clocks agree
    beat = pg.owners()[0][3]
    assert abs(beat - time.time()) < 5


def test_two_processes_migrating_at_once_both_succeed(postgres_url):
    def migrate(url, results):
        try:
            PostgresStore(url).migrate()
            results.put("ok")
        except Exception as exc:  # pragma: no cover - reported below
            results.put(repr(exc))

    outcomes = results_of_processes(migrate, [(postgres_url,)] * 3)
    assert outcomes == ["ok"] * 3


# -- the reader pool (psycopg_pool, flwd_server/store/postgres_pool.py) -------------------------


def _backend_pid(store_or_reader) -> int:
    reader = store_or_reader.reader() if hasattr(store_or_reader, "reader") else store_or_reader
    return reader.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_a_store_made_before_a_fork_works_in_the_child_and_the_parent_keeps_its_sessions(pg):
    parent_session = _backend_pid(pg)  # the parent's pool is open, with one idle connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child_session = _backend_pid(pg)
            pg.emit(None, "from.child", {})
            pg.flush()
            pg.close()  # the child's own pool; the parent's is not the child's to close
            gc.collect()
            os.write(write, b"1" if child_session != parent_session else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert _backend_pid(pg) == parent_session  # the same session: nothing in the child ended it
    assert [e.type for e in pg.events_after(0)] == ["from.child"]


def test_closing_the_store_leaves_a_borrowed_connection_to_the_query_it_runs(pg):
    """Closing a connection under a running query is a use-after-free in libpq (it was a segfault)."""
    holder = pg.connect()
    holder.execute("SELECT pg_advisory_lock(?, ?)", (LOCK_CLASS, 99))
    outcome: list = []
    reader = threading.Thread(
        target=lambda: outcome.append(
            pg.reader().execute("SELECT 42 FROM pg_advisory_xact_lock(?, ?)", (LOCK_CLASS, 99)).fetchall()
        )
    )
    reader.start()
    wait_until(
        lambda: (
            holder.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]
            == 1
        ),
        10,
        message="the reader to wait",
    )
    pg.close()
    assert reader.is_alive()  # close() did not wait for the borrower, nor cut it off
    holder.execute("SELECT pg_advisory_unlock(?, ?)", (LOCK_CLASS, 99))
    reader.join(10)
    assert outcome == [[(42,)]]
    others = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flwd' AND pid <> pg_backend_pid()"
    wait_until(
        lambda: holder.execute(others).fetchone()[0] == 0,
        10,
        message="the borrowed connection to be closed when given back",
    )
    holder.close()
    with pytest.raises(StorageError, match="cannot be read"):
        pg.get_run("nope")  # a closed store opens no new connections


def test_after_a_restart_reads_go_to_new_connections_at_once(postgres, postgres_url):
    readers = ReaderPool(postgres_url, 8)
    reader = PooledReader(readers)
    try:
        with readers.connection() as a, readers.connection() as b, readers.connection() as c:
            killed = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in (a, b, c)}
        with postgres.admin() as admin:  # what a restart or a failover does to the idle connections
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'flwd'")
            wait_until(
                lambda: (
                    admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flwd'").fetchone()[0]
                    == 0
                ),
                10,
                message="the kill",
            )
        for _ in range(3):
            started = time.monotonic()
            assert _backend_pid(reader) not in killed  # repeated once, on a new connection
            assert time.monotonic() - started < 5  # the pool's own check sleeps 1, 2, 4 s between dead connections
    finally:
        readers.close()


def test_a_database_that_cannot_be_reached_fails_reads_at_once_and_they_work_when_it_is_back(postgres):
    url = postgres.create_database()
    postgres.drop_database(url)
    readers = ReaderPool(url, 8)
    reader = PooledReader(readers)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(StorageError, match="cannot be read: .*does not exist") as raised:
                reader.execute("SELECT 1")
            assert raised.value.status == 503
            assert time.monotonic() - started < 5  # the pool connects in a thread: not 30 s waiting for it
        with postgres.admin() as admin:
            admin.execute(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')
        wait_until(lambda: _reads(reader), 20, 0.1, message="reads to work again")
    finally:
        readers.close()
        postgres.drop_database(url)


def test_a_reader_waits_for_a_free_connection_and_then_gives_up(postgres_url, monkeypatch):
    monkeypatch.setattr(postgres_pool, "WAIT", 0.5)
    readers = ReaderPool(postgres_url, 1)
    reader = PooledReader(readers)
    try:
        with readers.connection():
            with pytest.raises(
                StorageError, match=r"no free database connection after 0.5 s \(db_pool_size: 1\)"
            ) as raised:
                reader.execute("SELECT 1")
            assert raised.value.status == 503
        monkeypatch.setattr(postgres_pool, "WAIT", 30.0)
        outcome: list = []
        with readers.connection():
            queued = readers.pool.get_stats().get("requests_queued", 0)
            waiter = threading.Thread(target=lambda: outcome.append(reader.execute("SELECT 7").fetchall()))
            waiter.start()
            wait_until(
                lambda: readers.pool.get_stats().get("requests_queued", 0) >= queued + 3,
                10,
                message="the reader to wait",
            )
            assert waiter.is_alive()  # waiting for the connection, not failed
        waiter.join(10)
        assert outcome == [[(7,)]]
    finally:
        readers.close()


def _reads(reader: PooledReader) -> bool:
    try:
        reader.execute("SELECT 1")
    except StorageError:
        return False
    return True
