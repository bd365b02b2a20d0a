"""Runs and events in PostgreSQL (psycopg 3): several flwd nodes on one database.

The store is :class:`flwd_server.store.backend.Store` with another connection and a few
other statements; everything above it (engine, runner, HTTP, CLI) is the same.
What differs, and why (see docs/multinode.rst):

* **One body of SQL**, translated per statement (:mod:`.postgres_sql`).
* **Event ids in commit order.**  A sequence hands out ids when rows are
  inserted, not when they commit: transaction A can take id 10, B id 11, B
  commit first, and a reader that saw 11 and then asks for ``id > 11`` never
  sees 10.  So every write transaction (the writer thread's batches, which are
  the only ones that insert events) first takes one transaction-level advisory
  lock (``pg_advisory_xact_lock``), cluster-wide: ids are taken only by the
  holder, the lock is released after the commit is visible, so the next holder's
  ids are larger *and* later.  This is SQLite's one-writer rule, across nodes;
  group commit (one transaction per batch of queued writes) keeps it cheap.
* **Claims** run on their own connection, not in the writer: a claim
  transaction takes the *claim* advisory lock (claims are serialised, so the
  count of running runs it reads is exact), then ``SELECT ... FOR UPDATE SKIP
  LOCKED`` the oldest queued runs: a queued run that another transaction holds
  (a cancel in progress) is skipped, not waited for.  ``max_concurrent_runs``
  holds across every process of every node, and runs start in queue order.
* **Wake-ups.**  A transaction that wrote events sends ``NOTIFY flwd_events``;
  it is delivered at commit to every ``LISTEN``ing event poller on every node,
  which reads the new events at once.  Polling stays as the fallback.
* **Readers** share a small pool of autocommit connections per process
  (``db_pool_size``), not one per thread: a node with 32 request threads
  would otherwise hold 32 connections.  The pool is psycopg_pool's, opened on
  first use in the process that uses it (:mod:`.postgres_pool`); the writer's
  connection and the ``LISTEN`` connection are their own, outside it.
* **Clocks.**  Heartbeats are written in the database's clock and compared in
  it, so nodes whose clocks disagree do not declare each other dead.
"""

from __future__ import annotations

import contextlib
import logging
import select
import sqlite3
import time
from typing import Any

try:
    import psycopg
    from psycopg import pq

    from .postgres_pool import PooledReader, ReaderPool
    from .postgres_sql import PgConnection
except ImportError:  # pragma: no cover - the message below says what to install
    psycopg = None  # type: ignore[assignment]

from ..errors import ConfigError, StorageError
from ..logs import redact_url
from ..models import Run, RunStatus
from .backend import Store
from .queries import RUN_COLUMNS, RUN_WIDTH, ClaimedRun, run_from_row
from .queue import pick

log = logging.getLogger("flwd.store")

LOCK_CLASS = 0x666C7764  # "flwd": the first key of every advisory lock flwd takes
WRITE_LOCK = 1  # every write transaction: event ids in commit order
CLAIM_LOCK = 2  # every claim: the count of running runs is exact
MIGRATE_LOCK = 3  # one migration at a time
CHANNEL = "flwd_events"
LISTEN_FALLBACK = 1.0  # seconds between polls while LISTEN works (NOTIFY does the waking)

_BEGIN_WRITE = f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {WRITE_LOCK})"
_NOTIFY_COMMIT = f"NOTIFY {CHANNEL}; COMMIT"
_BEGIN_CLAIM = f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {CLAIM_LOCK})"
_CLAIM_COLUMNS = ", ".join(f"runs.{c.strip()}" for c in RUN_COLUMNS.split(","))
_LOCK_QUEUED = "SELECT id FROM runs WHERE id IN ({marks}) AND status = 'queued' FOR UPDATE SKIP LOCKED"

_INHERITED: list[Any] = []  # reader pools of a parent process: never used, never closed (that would end its sessions)


class PostgresStore(Store):
    """PostgreSQL-backed runs and events; one instance per process, any number of processes and nodes."""

    dialect = "postgres"
    notifies_peers = True
    _FOR_UPDATE = " FOR UPDATE"
    DB_CLOCK = "extract(epoch FROM clock_timestamp())"

    def __init__(self, url: str, pool_size: int = 8, queue_size: int = 20000) -> None:
        if psycopg is None:
            raise ConfigError("db_url", "PostgreSQL needs psycopg 3 and psycopg_pool: pip install 'flwd[postgres]'")
        self.errors = (psycopg.Error, sqlite3.Error)  # type: ignore[misc]
        self.url = url
        self.path = redact_url(url)
        self.pool_size = pool_size
        self.queue_size = queue_size
        self.synchronous = "NORMAL"
        self.busy_timeout = 30.0
        self._init_common()

    @property
    def wakeup_key(self) -> str:
        return "pg:" + self.path

    # -- connections ---------------------------------------------------------------

    def connect(self) -> PgConnection:  # type: ignore[override]
        raw = psycopg.connect(self.url, autocommit=True, connect_timeout=10, application_name="flwd")
        return PgConnection(raw)

    def _reset_after_fork(self) -> None:
        super()._reset_after_fork()
        old = getattr(self, "_pool", None)
        if old is not None:
            _INHERITED.append(old)  # the parent's pool and sessions: closing them here would end them there
        self._pool = ReaderPool(self.url, self.pool_size)  # opened on first use, in this process
        self._reader = PooledReader(self._pool)

    def reader(self) -> PooledReader:  # type: ignore[override]
        return self._reader

    def close_reader(self) -> None:
        pass  # pooled connections belong to the process, not to a thread

    def close(self) -> None:
        super().close()
        self._pool.close()

    # -- schema --------------------------------------------------------------------

    def _check_connection(self, conn: Any) -> None:
        version = conn.raw.info.server_version
        if version < 120000:
            raise StorageError(f"{self.label}: PostgreSQL {version // 10000} is too old; flwd needs 12 or newer")

    def _begin_migration(self, conn: Any) -> None:
        conn.run(f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {MIGRATE_LOCK})")

    def _self_check(self, conn: Any) -> None:
        pass  # SQLite's WAL check; PostgreSQL needs none

    # -- the writer ----------------------------------------------------------------

    def _apply(self, conn: Any, batch: list[Any]) -> None:
        """Commit a batch: first without savepoints, then - only if an operation failed - with them.

        The advisory lock in ``_begin`` orders writers (no file lock here).  A
        savepoint is two round trips to the server per operation; operations
        rarely fail, so a batch first runs without them.  If one fails, the
        whole attempt is rolled back and the batch runs again the SQLite way,
        each operation in its own savepoint, so the failure stays its own.
        """
        if not self._apply_optimistic(conn, batch):
            self._apply_locked(conn, batch)

    def _apply_optimistic(self, conn: Any, batch: list[Any]) -> bool:
        self._begin(conn)
        try:
            self._run_batch(conn, batch, savepoints=False)
        except Exception as exc:
            if conn.closed or (
                isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled)
            ):
                raise  # the connection, not an operation: the caller retries on a new one
            conn.raw.rollback()
            return False
        self._commit(conn)
        return True

    def _begin(self, conn: Any) -> None:
        conn.wrote_events = False
        conn.run(_BEGIN_WRITE)

    def _commit(self, conn: Any) -> None:
        conn.run(_NOTIFY_COMMIT if conn.wrote_events else "COMMIT")

    def _write_loop(self) -> None:
        try:
            super()._write_loop()
        except Exception:  # pragma: no cover - the writer must not die silently
            log.exception("database writer stopped")
            raise

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        return (0, 0, 0)  # PostgreSQL checkpoints by itself

    # -- claims --------------------------------------------------------------------

    def claim(self, owner: str, local_free: int, max_running: int, affinity_only: bool = False) -> list[ClaimedRun]:
        """The oldest queued runs, for ``owner``, never above ``max_running`` across every node.

        One transaction on a pooled connection: the claim lock (claims are
        serialised, so the counts - in total and per concurrency group - are
        exact), then the runs to start (store/queue.py), locked ``FOR UPDATE SKIP LOCKED``
        and still queued.
        """
        if local_free <= 0 or self._closed:
            return []
        affinity = "affinity = ?" if affinity_only else "(affinity IS NULL OR affinity = ?)"
        try:
            with self._pool.connection() as conn:
                # The lock first, in its own statement: the counts below must be read after it is held
                # (a statement's snapshot is taken when the statement starts).
                conn.run(_BEGIN_CLAIM)
                now = time.time()  # under the lock: started_at follows the order of claims, across nodes
                try:
                    rows = self._claim_locked(conn, owner, local_free, max_running, affinity, now)
                except BaseException:
                    conn.raw.rollback()
                    raise
                conn.run("COMMIT")
        except psycopg.Error as exc:
            raise StorageError(f"the database cannot be written: {exc}") from None
        rows.sort(key=lambda r: r[RUN_WIDTH + 1])  # RETURNING has no order: queue order is seq order
        claimed = []
        for row in rows:
            run = run_from_row(row)
            claimed.append(
                ClaimedRun(Run(**{**run.__dict__, "status": RunStatus.RUNNING, "started_at": now}), row[RUN_WIDTH])
            )
        return claimed

    @staticmethod
    def _claim_locked(conn: Any, owner: str, free: int, max_running: int, affinity: str, now: float) -> list[Any]:
        running = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
        room = min(free, max_running - running)
        if room <= 0:
            return []
        held: frozenset[str] = frozenset()
        for _ in range(4):  # a queued run another transaction holds (a cancel in progress) is left, not waited for
            ids = pick(conn, room, affinity, owner, held)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            locked = {row[0] for row in conn.execute(_LOCK_QUEUED.format(marks=marks), ids).fetchall()}
            if len(locked) == len(ids):
                break
            held |= set(ids) - locked  # and choose again without them: the choice depends on each run
        ids = [run_id for run_id in ids if run_id in locked]
        if not ids:  # every choice was held by another transaction four times over: claim at the next wake-up
            return []
        return conn.execute(
            f"UPDATE runs SET status = 'running', owner = ?, started_at = ? WHERE id IN ({','.join('?' * len(ids))}) "
            f"RETURNING {_CLAIM_COLUMNS}, runs.plan, runs.seq",
            (owner, now, *ids),
        ).fetchall()

    # -- events ----------------------------------------------------------------------

    def events_sequence(self) -> int:
        row = self.reader().execute("SELECT last_value, is_called FROM events_id_seq").fetchone()
        return int(row[0]) if row and row[1] else 0

    def watch(self, wakeups: Any) -> _ListenWatch:
        return _ListenWatch(self, wakeups)


class _ListenWatch:
    """The event poller's view of PostgreSQL: ``LISTEN flwd_events`` on a connection of its own.

    ``wait`` blocks on that connection's socket and on this process's wake-up
    socket at once; a notification (a commit with events, on any node), a local
    commit, or the fallback poll marks a change.  While the listening
    connection is down the poller polls every ``timeout`` and reconnects.
    """

    def __init__(self, store: PostgresStore, wakeups: Any) -> None:
        self.store = store
        self.wakeups = wakeups
        self.listener: Any = None
        self._pending = True
        self._next_poll = 0.0
        self._retry_at = 0.0
        self._listen()

    def _listen(self) -> None:
        raw = None
        try:
            raw = psycopg.connect(self.store.url, autocommit=True, connect_timeout=10, application_name="flwd-listen")
            raw.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            if raw is not None:  # connected, then cut: never leave it to the garbage collector
                with contextlib.suppress(Exception):
                    raw.close()
            log.warning("event poller: LISTEN failed (%s); polling until it works", exc)
            self.listener = None
            self._retry_at = time.monotonic() + 2.0
            return
        self.listener = raw
        self._pending = True  # whatever was sent while nobody listened: read it now

    def wait(self, timeout: float) -> None:
        if self.listener is None and time.monotonic() >= self._retry_at:
            self._listen()
        fds = []
        wake = self.wakeups.fileno()
        if wake is not None:
            fds.append(wake)
        if self.listener is not None:
            fds.append(self.listener.fileno())
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + max(timeout, LISTEN_FALLBACK)
                self._pending = True
            timeout = max(0.0, min(self._next_poll - now, LISTEN_FALLBACK))
        else:
            self._pending = True  # no LISTEN: every interval is a poll
        if self._pending and fds:
            timeout = 0.0  # a change is already known: only collect what else is waiting
        try:
            ready = select.select(fds, [], [], timeout)[0] if fds else []
        except (OSError, ValueError):
            ready = []
            self._drop()
        if not fds:
            time.sleep(timeout)
        if wake is not None and wake in ready:
            self.wakeups.drain()
            self._pending = True
        if self.listener is not None and self.listener.fileno() in ready:
            self._consume()

    def _consume(self) -> None:
        pgconn = self.listener.pgconn
        try:
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                self._pending = True
        except psycopg.Error as exc:
            log.warning("event poller: the LISTEN connection failed (%s); reconnecting", exc)
            self._drop()
        if pgconn.status != pq.ConnStatus.OK:
            self._drop()

    def _drop(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(Exception):
                self.listener.close()
        self.listener = None
        self._pending = True
        self._retry_at = time.monotonic() + 1.0

    def changed(self) -> bool:
        pending, self._pending = self._pending, False
        return pending

    def reset(self) -> None:
        self._pending = True

    def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(Exception):
                self.listener.close()
            self.listener = None
