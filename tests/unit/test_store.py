"""The store on both backends: transactions, claims across processes, fork safety.

``store`` runs each test on SQLite and on PostgreSQL (a throwaway cluster,
tests/fixtures/postgres.py); ``sqlite_store`` is for what only SQLite has
(pragmas, WAL, per-thread connections).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time

import pytest

from flwd_server.errors import IdempotencyMismatch, StorageError
from flwd_server.models import RunStatus
from flwd_server.store import Store
from flwd_server.store.queries import new_run_id
from flwd_server.store.schema import SCHEMA_VERSION
from flwd_server.store.sqlite import SQLiteStore
from tests.fixtures.helpers import results_of_processes
from tests.fixtures.postgres import open_backend


def _plan(job="j"):
    return {"job": {"name": job, "source": "s", "steps": []}, "args": {}, "profile": "secure"}


def _public(job="j"):
    return {"job": job, "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None}


def queue_runs(store: Store, count: int) -> list[str]:
    return [
        store.create_run(plan=_plan(), public=_public(), submitted_by="t", initial_events=[("run.queued", {})])[0].id
        for _ in range(count)
    ]


def test_every_connection_has_the_pragmas(sqlite_store):
    store = sqlite_store
    conn = store.connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    full = SQLiteStore(store.path, synchronous="full").connect()
    assert full.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_migration_is_versioned_and_idempotent(store):
    key = store.digest_key()
    assert store.migrate() == SCHEMA_VERSION
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    assert store.digest_key() == key and len(key) == 32  # a second migrate keeps the key


def test_a_newer_schema_is_refused(store):
    conn = store.connect()
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StorageError, match="newer than this flwd"):
        store.migrate()


def test_claims_use_begin_immediate_and_leave_no_transaction_open(sqlite_store):
    store = sqlite_store
    queue_runs(store, 2)
    statements = []
    traced = SQLiteStore(store.path)  # a second store whose writer connection is traced
    original = traced.connect

    def connect():
        conn = original()
        conn.set_trace_callback(statements.append)
        return conn

    traced.connect = connect
    claimed = traced.claim("me", 5, 10)
    traced.close()
    assert len(claimed) == 2
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins and all(s == "BEGIN IMMEDIATE" for s in begins)
    assert not store.reader().in_transaction


def test_fifty_threads_write_through_one_writer_without_errors(store):
    run_id = queue_runs(store, 1)[0]
    errors = []

    def work(n):
        try:
            for i in range(20):
                store.emit(run_id, "step.output", {"n": n, "i": i})
            store.flush()
            store.get_run(run_id)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.events_after(0, run_id, 10000)) == 1 + 50 * 20


def test_reader_connections_are_per_thread_and_not_shared(sqlite_store):
    store = sqlite_store
    seen = []

    def grab():
        seen.append(store.reader())

    t = threading.Thread(target=grab)
    t.start()
    t.join()
    assert seen[0] is not store.reader()
    with pytest.raises(sqlite3.ProgrammingError):
        seen[0].execute("SELECT 1")  # check_same_thread stays on: leaks fail loudly


def test_claims_never_exceed_the_limit_and_keep_submission_order(store):
    ids = queue_runs(store, 5)
    first = store.claim("a", 10, 2)
    assert [c.run.id for c in first] == ids[:2]
    assert store.claim("b", 10, 2) == []
    store.finish_run(ids[0], RunStatus.SUCCEEDED, exit_code=0)
    assert [c.run.id for c in store.claim("b", 10, 2)] == [ids[2]]


def _claim_worker(backend, owner, results):
    store = open_backend(backend)
    got = []
    threads = []

    def loop():
        while True:
            claimed = store.claim(f"{owner}-{threading.get_ident()}", 1, 10_000)
            if not claimed:
                return
            got.extend(c.run.id for c in claimed)

    for _ in range(8):
        threads.append(threading.Thread(target=loop))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(got)
    store.close()


def test_two_processes_with_eight_threads_claim_each_run_exactly_once(store, store_spec):
    ids = queue_runs(store, 500)
    claimed = sum(results_of_processes(_claim_worker, [(store_spec, f"p{i}") for i in range(2)]), [])
    assert sorted(claimed) == sorted(ids)


def test_a_writer_waits_for_a_lock_instead_of_failing(store):
    queue_runs(store, 1)
    blocker = store.connect()
    blocker.execute("BEGIN IMMEDIATE")
    if store.dialect == "postgres":  # what another node's writer holds while it commits
        from flwd_server.store.postgres import LOCK_CLASS, WRITE_LOCK

        blocker.execute("SELECT pg_advisory_xact_lock(?, ?)", (LOCK_CLASS, WRITE_LOCK))
    done = threading.Event()

    def write():
        store.emit(None, "x", {})
        store.flush()
        done.set()

    t = threading.Thread(target=write)
    t.start()
    assert not done.wait(0.5)  # blocked behind the other transaction, not failed
    blocker.execute("COMMIT")
    assert done.wait(10)
    t.join()
    blocker.close()


def test_after_a_fork_the_child_opens_its_own_connections(store):
    parent_reader = store.reader()
    store.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child_reader = store.reader()
            store.emit(None, "from.child", {})
            store.flush()
            ok = child_reader is not parent_reader and store._writer is not None
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert [e.type for e in store.events_after(0)] == ["from.child"]


def test_idempotency_replays_the_same_body_and_refuses_another(store):
    first, replayed = store.create_run(plan=_plan(), public=_public(), submitted_by="t", idempotency=("t", "k1", "h1"))
    again, replayed_again = store.create_run(
        plan=_plan(), public=_public(), submitted_by="t", idempotency=("t", "k1", "h1")
    )
    assert (replayed, replayed_again, again.id) == (False, True, first.id)
    with pytest.raises(IdempotencyMismatch):
        store.create_run(plan=_plan(), public=_public(), submitted_by="t", idempotency=("t", "k1", "h2"))
    assert len(store.list_runs()[0]) == 1


def test_finish_is_atomic_with_its_event_and_scrubs_secrets(store):
    run, _ = store.create_run(
        plan={**_plan(), "args": {"pw": "hunter2"}, "secret_args": ["pw"]}, public=_public(), submitted_by="t"
    )
    store.claim("me", 1, 1)
    assert store.finish_run(run.id, RunStatus.FAILED, exit_code=3, reason="boom")
    assert not store.finish_run(run.id, RunStatus.SUCCEEDED)  # already ended: nothing written
    events = store.events_after(0, run.id)
    assert [e.type for e in events] == ["run.finished"]
    assert events[0].data["status"] == "failed" and events[0].data["exit_code"] == 3
    assert "hunter2" not in json.dumps(store.run_plan(run.id))


def test_a_run_s_outputs_are_stored_with_its_end_and_shown_everywhere_it_is(store):
    outputs = {"version": "1.2.3", "count": 42, "ok": True, "notes": "a\nb", "label": "€"}
    run, _ = store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    other, _ = store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    assert store.get_run(run.id).outputs == {}  # none until it ends
    store.claim("me", 2, 2)
    store.finish_run(run.id, RunStatus.SUCCEEDED, exit_code=0, outputs=outputs)
    store.finish_run(other.id, RunStatus.SUCCEEDED, exit_code=0)
    assert store.get_run(run.id).outputs == outputs
    assert store.get_run(run.id).to_dict()["outputs"] == outputs
    assert {r.id: r.outputs for r in store.list_runs()[0]} == {run.id: outputs, other.id: {}}
    assert store.events_after(0, run.id)[-1].data["outputs"] == outputs
    assert store.events_after(0, other.id)[-1].data["outputs"] == {}


def test_prune_keeps_the_newest_finished_runs_and_never_active_ones(store):
    ids = queue_runs(store, 8)
    claimed = store.claim("me", 8, 8)
    for c in claimed[:6]:
        store.finish_run(c.run.id, RunStatus.SUCCEEDED)
    store.emit(ids[0], "step.output", {"line": "x"})
    assert store.prune(2) == 4
    left = {r.id for r in store.list_runs(limit=100)[0]}
    assert left == set(ids[4:])
    assert store.events_after(0, ids[0]) == []


def test_run_ids_are_unique_and_time_ordered():
    ids = [new_run_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 26 for i in ids)


class _ReadOnlySwitch:
    """New connections of ``store`` are read-only while ``on``: what a read-only remount looks like to SQLite."""

    def __init__(self, store: Store) -> None:
        self.on = True
        self._connect = store.connect
        store.connect = self.connect

    def connect(self) -> sqlite3.Connection:
        conn = self._connect()
        if self.on:
            conn.execute("PRAGMA query_only = 1")
        return conn


def test_a_read_only_database_gives_storage_errors_then_recovers(tmp_path):  # PostgreSQL: see test_pgstore
    store = SQLiteStore(tmp_path / "ro.db")
    store.migrate()
    read_only = _ReadOnlySwitch(store)
    with pytest.raises(StorageError, match="cannot be written"):
        store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    assert store.list_runs()[0] == []
    read_only.on = False
    run, _ = store.create_run(plan=_plan(), public=_public(), submitted_by="t")
    assert store.get_run(run.id).status is RunStatus.QUEUED
    store.close()


def test_a_caller_is_answered_while_queued_events_wait_for_the_disk(tmp_path):
    """Events are retried for a while on a failing disk; a caller queued behind them is told at once."""
    store = SQLiteStore(tmp_path / "full.db")
    store.migrate()
    read_only = _ReadOnlySwitch(store)
    store.close_reader()
    store.emit(None, "queued", {})  # the writer now retries this, pausing up to 1 s between attempts
    outcome: list[BaseException] = []
    caller = threading.Thread(
        target=lambda: outcome.append(
            _raised(lambda: store.create_run(plan=_plan(), public=_public(), submitted_by="t"))
        )
    )
    caller.start()
    caller.join(timeout=5)  # all retries take about 25 s: before this, the caller waited them out
    assert not caller.is_alive() and isinstance(outcome[0], StorageError)
    read_only.on = False
    store.flush()
    assert [e.type for e in store.events_after(0)] == ["queued"]  # retried, not lost
    store.close()


def _raised(fn) -> BaseException | None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever it was
        return exc
    return None


def test_one_failing_operation_in_a_batch_takes_nothing_else_with_it(store):
    """PostgreSQL runs a batch without savepoints first and falls back to them when an operation fails."""
    gate = threading.Event()
    store.write_later(lambda conn: gate.wait(10))  # holds the writer: what follows queues up as one batch
    store.write_later(lambda conn: conn.execute("INSERT INTO meta(key, value) VALUES ('before', '1')"))

    def half_done(conn):
        conn.execute("INSERT INTO meta(key, value) VALUES ('half', 'done')")
        raise ValueError("boom")

    store.write_later(half_done)
    store.emit(None, "after", {})
    store.write_later(lambda conn: conn.execute("INSERT INTO meta(key, value) VALUES ('after', '1')"))
    gate.set()
    store.flush()
    assert (store.meta("before"), store.meta("half"), store.meta("after")) == ("1", None, "1")
    assert [e.type for e in store.events_after(0)] == ["after"]


def test_a_chunk_of_output_keeps_its_order_in_the_ids(store):
    rows = [("r", "step.output", 1.0, json.dumps({"line": f"line {i}"})) for i in range(3000)]
    store.emit_rows(rows)
    store.flush()
    events = store.events_after(0, "r", limit=5000)
    assert [e.data["line"] for e in events] == [f"line {i}" for i in range(3000)]
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_a_stream_ticket_is_found_until_it_expires_and_expired_ones_are_removed(store):
    now = time.time()
    store.create_ticket("old", "alice", None, now - 1)
    store.create_ticket("live", "alice", "RUN", now + 60)
    assert store.find_ticket("live") == ("alice", "RUN", now + 60, None)
    assert store.find_ticket("live") == ("alice", "RUN", now + 60, None)  # reusable: finding it takes nothing out
    assert store.find_ticket("old") is None  # expired
    assert store.find_ticket("unknown") is None
    rows = store.reader().execute("SELECT digest FROM stream_tickets ORDER BY digest").fetchall()
    assert [row[0] for row in rows] == ["live"]  # the expired one went when the next was issued


def test_a_stream_ticket_keeps_the_scopes_of_the_token_that_asked(store):
    expires = time.time() + 60
    store.create_ticket("narrow", "bob", None, expires, "runs:read:bar:* sources:read")
    assert store.find_ticket("narrow") == ("bob", None, expires, "runs:read:bar:* sources:read")


def test_runs_are_listed_for_a_narrowed_token_in_the_query_on_both_backends(store):
    """LIKE with ESCAPE '!' means the same on SQLite and PostgreSQL: '_' in a name is no wildcard."""
    from flwd_server.auth.scopes import grants_of

    made = {}
    for job in ("a_b", "axb", "a_bc", "other"):
        made[job] = store.create_run(plan=_plan(job), public=_public(job), submitted_by="t")[0].id
    grants = grants_of(["runs:read:s:a_b", "runs:read:s:oth*"], "runs:read")
    page, cursor = store.list_runs(grants=grants, limit=1)
    assert [r.job for r in page] == ["other"] and cursor is not None
    rest, end = store.list_runs(grants=grants, limit=1, before=cursor)
    assert [r.job for r in rest] == ["a_b"] and end is None
    assert [r.job for r in store.list_runs(grants=grants)[0]] == ["other", "a_b"]
    assert store.list_runs(grants=frozenset())[0] == []
    assert store.list_runs(grants=grants_of(["runs:read:t:*"], "runs:read"))[0] == []


def test_every_way_a_run_ends_drops_its_secret_values_from_the_stored_plan(store):
    """Refused at submit, cancelled while queued, lost with its owner (queued or running), finished."""

    def submit(status: RunStatus = RunStatus.QUEUED, affinity: str | None = None) -> str:
        plan = {**_plan(), "args": {"token": "hunter2-secret"}, "secret_args": ["token"]}
        return store.create_run(plan=plan, public=_public(), submitted_by="t", status=status, affinity=affinity)[0].id

    refused = submit(RunStatus.REJECTED)
    cancelled = submit()
    store.request_cancel(cancelled, "someone")
    stranded = submit(affinity="cli:gone")
    running = submit()
    assert [c.run.id for c in store.claim("gone-owner", 1, 10)] == [running]
    finished = submit()
    assert [c.run.id for c in store.claim("alive", 1, 10)] == [finished]
    store.mark_stranded(lambda owner, *_: owner == "cli:gone", "its process died")
    store.mark_lost(lambda owner, *_: owner == "gone-owner", "the owner died")
    store.finish_run(finished, RunStatus.SUCCEEDED, exit_code=0)
    for run_id in (refused, cancelled, stranded, running, finished):
        assert store.get_run(run_id).status.is_terminal, run_id
        assert store.run_plan(run_id)["args"] == {"token": "***"}, store.get_run(run_id).status


def test_a_write_lock_file_that_cannot_be_opened_is_a_storage_error_and_the_writer_lives_on(tmp_path, monkeypatch):
    """A worker whose first write comes after the data dir turned read-only cannot open the lock file
    every writer takes: that is the disk, like any failed write, not a reason for the writer to die."""
    store = SQLiteStore(tmp_path / "lock.db")
    store.migrate()
    store.close()
    store = SQLiteStore(tmp_path / "lock.db")  # a fresh process's store: its lock file is not open yet
    real_open = os.open

    def read_only_open(path, *args, **kwargs):
        if str(path).endswith(".writelock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("flwd_server.store.sqlite.os.open", read_only_open)
    outcome: list[BaseException | None] = []
    caller = threading.Thread(
        target=lambda: outcome.append(
            _raised(lambda: store.create_run(plan=_plan(), public=_public(), submitted_by="t"))
        ),
        daemon=True,  # before the fix it waited forever for a writer that had died
    )
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive() and isinstance(outcome[0], StorageError), outcome
    assert "read-only" in str(outcome[0]).lower()
    monkeypatch.setattr("flwd_server.store.sqlite.os.open", real_open)
    run, _ = store.create_run(plan=_plan(), public=_public(), submitted_by="t")  # the same writer, alive
    assert store.get_run(run.id).status is RunStatus.QUEUED
    store.close()
