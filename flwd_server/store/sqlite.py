"""Runs and events in SQLite (WAL), safe across threads and worker processes.

Design notes (see docs/architecture.rst):

* One *writer thread* per process owns the only writing connection.  Every
  write is an operation queued to it; it runs whatever is queued in one
  ``BEGIN IMMEDIATE`` transaction (group commit), each operation inside its own
  savepoint so one failure never takes the others with it.  Step output is
  queued without waiting (bounded queue: a job that prints faster than the
  disk writes is slowed down, memory is not); state changes wait for commit.
* Claims run inside that same ``BEGIN IMMEDIATE``, so the count of running
  runs and the claim are atomic across processes: ``max_concurrent_runs`` is
  a property of the database, not of a process.
* Readers use one connection per thread, created lazily and tied to the pid,
  so nothing opened before a fork is ever used after it.
* Event ids come from ``INTEGER PRIMARY KEY AUTOINCREMENT``; SQLite has one
  writer at a time, so ids are strictly increasing in commit order and a
  reader that asks for ``id > last`` never misses one.

The SQL here is written once for both backends: :mod:`flwd_server.store.postgres`
subclasses :class:`Store` for PostgreSQL and translates the few SQLite-only
spellings (``?`` placeholders, ``BEGIN IMMEDIATE``, ``AUTOINCREMENT``, ``REAL``)
as it executes them.  :func:`open_store` picks the backend from the settings.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IdempotencyMismatch, RunFinished, RunNotFound, StorageError, Unavailable
from ..forksafe import reset_after_fork
from ..models import Event, EventType, Run, RunStatus

log = logging.getLogger("flwd.store")

SCHEMA_VERSION = 1
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
}

_RUN_COLUMNS = (
    "id, job, source, revision, args, status, profile, submitted_by, created_at, "
    "started_at, finished_at, exit_code, reason, plan_digest"
)
# Finished runs, as the partial index ``runs_finished_seq`` spells it (the planner needs the same text).
_FINISHED = "status NOT IN ('queued', 'running')"
_INDEXES = (f"CREATE INDEX IF NOT EXISTS runs_finished_seq ON runs(seq) WHERE {_FINISHED}",)
_INSERT_EVENT = "INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, ?, ?)"
# An upsert both SQLite (3.24+) and PostgreSQL understand; INSERT OR REPLACE is SQLite's alone.
SET_META = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_run_id() -> str:
    """A 26-character, time-ordered, URL-safe id (ULID layout, lowercase)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _run_from_row(row: sqlite3.Row | tuple) -> Run:
    return Run(
        id=row[0],
        job=row[1],
        source=row[2],
        revision=row[3],
        args=json.loads(row[4]),
        status=RunStatus(row[5]),
        profile=row[6],
        submitted_by=row[7],
        created_at=row[8],
        started_at=row[9],
        finished_at=row[10],
        exit_code=row[11],
        reason=row[12],
        plan_digest=row[13],
    )


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


@dataclass
class ClaimedRun:
    """A run this process now owns, with its stored plan as JSON text.

    The text is parsed by whoever executes the run, not on the writer thread,
    which every process's writes go through.
    """

    run: Run
    plan_json: str

    @property
    def plan(self) -> dict[str, Any]:
        return _parse_plan(self.plan_json)


class _Op:
    """One queued write that runs ``fn(conn)`` in a savepoint; events are queued as bare tuples.

    A waiting caller blocks on a plain lock that the writer releases: cheaper
    than an Event (which is a Condition and a lock) on every write.
    """

    __slots__ = ("fn", "lock", "result", "error")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], wait: bool) -> None:
        self.fn = fn
        self.lock = _allocate_lock() if wait else None
        if self.lock is not None:
            self.lock.acquire()
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        if self.lock is not None:
            self.lock.release()


_STOP = object()


class Store:
    """SQLite-backed runs and events; one instance per process is enough."""

    dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)  # what a failing database raises
    notifies_peers = False  # PostgreSQL's NOTIFY wakes other processes; SQLite needs wake-up datagrams
    _FOR_UPDATE = ""  # SQLite's writer is alone: no row locks to take

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "normal", busy_timeout: float = 30.0, queue_size: int = 20000) -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.queue_size = queue_size
        self._init_common()

    @property
    def label(self) -> str:
        """The database as logs and messages name it (never with a password)."""
        return self.path

    @property
    def wakeup_key(self) -> str:
        """What the processes sharing this database have in common (names their wake-up sockets)."""
        return os.path.abspath(self.path)

    def _init_common(self) -> None:
        self._reset_after_fork()
        self._commit_listeners: list[Callable[[], None]] = []
        self._prune_listeners: list[Callable[[sqlite3.Connection], Any]] = []
        self._closed = False
        self._queued_count = 0
        self._queued_checked = 0.0
        self.events_written = 0
        self.write_failures = 0
        reset_after_fork(self, "_reset_after_fork")

    # -- connections ---------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """A new connection with every per-connection pragma set (they do not persist)."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        for attempt in range(100):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                # Turning a new database to WAL needs it to itself, and SQLite's busy
                # handler does not cover that: processes starting together retry.
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _reset_after_fork(self) -> None:
        """Forget every thread and connection inherited from a parent process."""
        self._local = threading.local()
        self._pending: deque[Any] = deque()
        self._idle = False
        self._wakeup = threading.Event()
        self._room = threading.Condition()
        self._blocked = 0
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        inherited = getattr(self, "_lock_fd", None)
        if inherited is not None:
            with contextlib.suppress(OSError):
                os.close(inherited)
        self._lock_fd: int | None = None  # a forked child opens its own: flock is per open file

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (never shared across threads or processes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def close_reader(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- schema --------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version.  Safe to call from every process."""
        try:
            conn = self.connect()
        except self.errors as exc:
            raise StorageError(f"{self.label}: cannot open the database: {exc}") from None
        try:
            self._check_connection(conn)
            self._begin_migration(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StorageError(f"{self.label}: schema version {version} is newer than this flwd ({SCHEMA_VERSION}); upgrade flwd")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(SET_META, ("schema_version", str(target)))
            for index in _INDEXES:
                conn.execute(index)
            if not conn.execute("SELECT 1 FROM meta WHERE key = 'digest_key'").fetchone():
                conn.execute("INSERT INTO meta(key, value) VALUES ('digest_key', ?)", (secrets.token_hex(32),))
            conn.execute("COMMIT")
            self._self_check(conn)
            return SCHEMA_VERSION
        except self.errors as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(f"{self.label}: cannot prepare the database: {exc}") from None
        finally:
            conn.close()

    def _check_connection(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"{self.path}: SQLite could not enable WAL (got {mode}); use a local filesystem")

    def _begin_migration(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _self_check(self, conn: sqlite3.Connection) -> None:
        """WAL needs working shared memory: write on one connection, read on another."""
        token = secrets.token_hex(8)
        key = f"self_check:{token}"  # one key per check: workers migrating at once must not read each other's
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, token))
        other = self.connect()
        try:
            row = other.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            other.close()
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        if not row or row[0] != token:
            raise StorageError(f"{self.path}: a write was not visible to a second connection; WAL does not work on this filesystem")

    def meta(self, key: str) -> str | None:
        row = self.reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- the writer ----------------------------------------------------------

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._commit_listeners.append(listener)

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="flwd-store-writer", daemon=True)
                self._writer.start()

    def _put(self, item: Any) -> bool:
        """Queue one item for the writer; wake it only if it is waiting.

        The queue is bounded: a producer faster than the disk (a job printing
        without pause) waits here for room, so memory stays flat.
        """
        if self._closed:
            log.debug("write after the store closed: dropped")
            return False
        self._ensure_writer()
        if len(self._pending) >= self.queue_size and threading.current_thread() is not self._writer:
            with self._room:
                self._blocked += 1
                try:
                    self._room.wait_for(lambda: len(self._pending) < self.queue_size or self._writer is None or not self._writer.is_alive(), timeout=60)
                finally:
                    self._blocked -= 1
        self._pending.append(item)
        if self._idle:
            self._wakeup.set()
        return True

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in a write transaction on the writer thread; return its result."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        op = _Op(fn, wait=True)
        if not self._put(op):
            raise Unavailable("the server is shutting down")
        op.lock.acquire()  # type: ignore[union-attr]  # released by the writer
        if op.error is not None:
            raise op.error
        return op.result

    def write_later(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue ``fn(conn)`` for the writer thread without waiting for it (a failure is logged)."""
        if self._closed:
            return

        def logged(conn: sqlite3.Connection) -> Any:
            try:
                return fn(conn)
            except self.errors as exc:  # the disk, not the code: one line, the batch retries it
                log.error("queued write failed: the database cannot be written: %s", exc)
                raise
            except Exception:
                log.exception("queued write failed")
                raise

        self._put(_Op(logged, wait=False))

    def emit(self, run_id: str | None, type: str, data: dict[str, Any], ts: float | None = None) -> None:
        """Queue an event without waiting (blocks only when the queue is full)."""
        self._put((run_id, type, ts or time.time(), _dumps(data)))

    def emit_rows(self, rows: list[tuple[str | None, str, float, str]]) -> None:
        """Queue ready-made ``(run_id, type, ts, data_json)`` rows (a chunk of output) at once."""
        if not rows or self._closed:
            return
        if len(self._pending) >= self.queue_size:
            for row in rows:  # the slow path waits for room, row by row
                self._put(row)
            return
        self._ensure_writer()
        self._pending.extend(rows)
        if self._idle:
            self._wakeup.set()

    def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        self.write(lambda conn: None)

    def _next_batch(self) -> tuple[list[Any], bool]:
        """Everything queued (up to 5,000 items), waiting while there is nothing; and whether to stop."""
        pending = self._pending
        while not pending:
            self._idle = True
            if not pending:  # checked again after announcing idleness: no wake-up is lost
                self._wakeup.wait()
            self._wakeup.clear()
            self._idle = False
        batch: list[Any] = []
        self._take_more(batch)
        stop = len(batch) < 5000 and bool(pending) and pending[0] is _STOP
        if stop:
            pending.popleft()
        return batch, stop

    def _take_more(self, batch: list[Any]) -> None:
        """Move what is queued into ``batch`` (up to 5,000 items, never past a stop marker)."""
        pending = self._pending
        while pending and len(batch) < 5000 and pending[0] is not _STOP:
            batch.append(pending.popleft())
        if self._blocked:
            with self._room:
                self._room.notify_all()

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    conn = self._commit_batch(conn, batch)
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _fail(self, batch: list[Any], exc: Exception) -> None:
        error = exc if isinstance(exc, Unavailable) else StorageError(f"the database cannot be written: {exc}")
        self.write_failures += 1
        for op in batch:
            if type(op) is _Op:
                op.error = error
                op.finish()

    def _write_lock(self) -> int:
        """A file lock that orders the writers of every process.

        SQLite's own busy handler polls with sleeps of up to 100 ms when
        another process holds the write lock; a blocking ``flock`` is woken the
        moment the holder lets go, so two workers' writers take turns without
        those sleeps.
        """
        fd = self._lock_fd
        if fd is None:
            fd = self._lock_fd = os.open(self.path + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return fd

    def _apply(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        lock = self._write_lock()
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            self._apply_locked(conn, batch)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """Open a write transaction (SQLite: take the database's write lock now)."""
        conn.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def _apply_locked(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        self._begin(conn)
        pending: list[tuple] = []
        for op in batch:
            if type(op) is tuple:
                pending.append(op)
                continue
            if pending:
                conn.executemany(_INSERT_EVENT, pending)
                pending = []
            conn.execute("SAVEPOINT op")
            try:
                op.result, op.error = op.fn(conn), None
                conn.execute("RELEASE op")
            except Exception as exc:  # this op's own failure; the rest of the batch goes on
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                op.error = exc
        if pending:
            conn.executemany(_INSERT_EVENT, pending)
        self._commit(conn)

    def _commit_batch(self, conn: sqlite3.Connection | None, batch: list[Any]) -> sqlite3.Connection | None:
        """Commit a batch; on a storage failure tell waiting callers at once, retry queued events a while.

        Returns the connection to go on with, or None when the next batch must open a new one.
        Every retry opens a fresh handle: a remounted or repaired file needs one.
        """
        attempts = 0
        while batch:
            try:
                if conn is None:
                    conn = self.connect()
                self._apply(conn, batch)
            except self.errors as exc:
                if conn is not None:
                    with contextlib.suppress(*self.errors):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    with contextlib.suppress(*self.errors):
                        conn.close()
                    conn = None
                attempts += 1
                self.write_failures += 1
                error = StorageError(f"the database cannot be written: {exc}")
                for op in batch:
                    if type(op) is _Op and op.lock is not None:
                        op.error = error
                        op.finish()
                batch = [op for op in batch if type(op) is tuple or op.lock is None]
                if attempts >= 30:
                    log.error("database write failed %d times (%s); %d queued writes dropped", attempts, exc, len(batch))
                    return None
                if batch:
                    log.warning("database write failed (%s); retrying %d queued writes", exc, len(batch))
                    time.sleep(min(0.1 * attempts, 1.0))
                    # Callers that queued meanwhile go into the retry: each learns within one
                    # pause whether the disk has room, instead of waiting out every retry.
                    self._take_more(batch)
                continue
            written = 0
            for op in batch:
                if type(op) is tuple:
                    written += 1
                else:
                    op.finish()
            self.events_written += written
            break
        for listener in self._commit_listeners:
            try:
                listener()
            except Exception:  # a listener never breaks the writer
                log.exception("commit listener failed")
        return conn

    def close(self) -> None:
        """Flush and stop the writer (used on shutdown and by tests)."""
        writer = self._writer
        self._closed = True  # from now on nothing is queued (and no writer restarted)
        if writer is not None and writer.is_alive():
            self._pending.append(_STOP)
            self._wakeup.set()
            writer.join(timeout=10)
        # Anything that slipped in behind the stop marker never runs: release its waiter.
        self._fail([item for item in self._pending if type(item) is _Op], Unavailable("the server is shutting down"))
        self._pending.clear()
        self.close_reader()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    # -- runs ----------------------------------------------------------------

    def create_run(
        self,
        *,
        plan: dict[str, Any] | str,
        public: dict[str, Any],
        submitted_by: str,
        status: RunStatus = RunStatus.QUEUED,
        initial_events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
        idempotency: tuple[str, str, str] | None = None,
        affinity: str | None = None,
        max_queued: int | None = None,
    ) -> tuple[Run, bool]:
        """Insert a run and its first events atomically; returns ``(run, replayed)``.

        ``idempotency`` is ``(subject, key, body_hash)``: the same key and body
        give back the first run, the same key with another body is refused.
        """
        run_id = new_run_id()
        now = time.time()
        plan_text = plan if isinstance(plan, str) else _dumps(plan)
        args_text = _dumps(public["args"])
        event_rows = [(run_id, type_, now, _dumps(data)) for type_, data in initial_events]
        finished = now if RunStatus(status).is_terminal else None
        created = Run(
            id=run_id,
            job=public["job"],
            source=public["source"],
            revision=public.get("revision"),
            args=public["args"],
            status=status,
            profile=public["profile"],
            submitted_by=submitted_by,
            created_at=now,
            finished_at=finished,
            reason=public.get("reason"),
            plan_digest=public.get("digest"),
        )

        def op(conn: sqlite3.Connection) -> tuple[Run, bool]:
            if idempotency is not None:
                subject, key, body_hash = idempotency
                row = conn.execute("SELECT body_hash, run_id FROM idempotency WHERE subject = ? AND key = ?", (subject, key)).fetchone()
                if row:
                    if row[0] != body_hash:
                        raise IdempotencyMismatch(
                            f"Idempotency-Key {key!r} was used with a different request body; use a new key",
                            [{"field": "Idempotency-Key", "message": "reused with a different body"}],
                        )
                    existing = self._get_run(conn, row[1])
                    if existing is not None:
                        return existing, True
            if max_queued is not None and status is RunStatus.QUEUED and self._queue_full(conn, max_queued):
                raise Unavailable(f"{max_queued} runs are already queued (limits.max_queued_runs); retry later", retry_after=10)
            conn.execute(
                "INSERT INTO runs(id, job, source, revision, args, status, profile, submitted_by, created_at, "
                "finished_at, reason, plan_digest, plan, affinity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    public["job"],
                    public["source"],
                    public.get("revision"),
                    args_text,
                    status.value,
                    public["profile"],
                    submitted_by,
                    now,
                    finished,
                    public.get("reason"),
                    public.get("digest"),
                    plan_text,
                    affinity,
                ),
            )
            conn.executemany(_INSERT_EVENT, event_rows)
            if idempotency is not None:
                subject, key, body_hash = idempotency
                conn.execute(
                    "INSERT INTO idempotency(subject, key, body_hash, run_id, created_at) VALUES (?, ?, ?, ?, ?)",
                    (subject, key, body_hash, run_id, now),
                )
            return created, False

        return self.write(op)

    def _queue_full(self, conn: sqlite3.Connection, limit: int) -> bool:
        """Whether ``limit`` runs are queued; counted at most twice a second (runs as the writer)."""
        now = time.monotonic()
        if now - self._queued_checked > 0.5 or self._queued_count >= limit - 1000:
            self._queued_count = conn.execute("SELECT count(*) FROM runs WHERE status = 'queued'").fetchone()[0]
            self._queued_checked = now
        else:
            self._queued_count += 1
        return self._queued_count >= limit

    @staticmethod
    def _get_run(conn: sqlite3.Connection, run_id: str, suffix: str = "") -> Run | None:
        row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?{suffix}", (run_id,)).fetchone()
        return _run_from_row(row) if row else None

    def get_run(self, run_id: str) -> Run:
        run = self._get_run(self.reader(), run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run

    def run_plan(self, run_id: str) -> dict[str, Any]:
        row = self.reader().execute("SELECT plan FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return json.loads(row[0])

    def list_runs(
        self,
        *,
        status: str | None = None,
        job: str | None = None,
        source: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> tuple[list[Run], int | None]:
        """Newest first; ``before`` is the cursor from a previous page."""
        clauses, params = [], []
        for column, value in (("status", status), ("job", job), ("source", source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.reader().execute(
            f"SELECT {_RUN_COLUMNS}, seq FROM runs {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1)
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_run_from_row(r) for r in rows], (rows[-1][14] if more else None)

    def count_runs(self) -> dict[str, int]:
        return dict(self.reader().execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())

    def claim(self, owner: str, local_free: int, max_running: int, affinity_only: bool = False) -> list[ClaimedRun]:
        """Move the oldest queued runs to ``running`` for ``owner``, never above ``max_running`` in total.

        Runs bound to an owner (a CLI's local runs) are claimed only by it;
        with ``affinity_only`` the owner claims nothing else.
        """
        affinity = "affinity = ?" if affinity_only else "(affinity IS NULL OR affinity = ?)"
        if local_free <= 0:
            return []

        def op(conn: sqlite3.Connection) -> list[ClaimedRun]:
            running = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
            room = min(local_free, max_running - running)
            if room <= 0:
                return []
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS}, plan FROM runs WHERE status = 'queued' AND {affinity} ORDER BY seq LIMIT ?",
                (owner, room),
            ).fetchall()
            now = time.time()
            claimed = []
            for row in rows:
                conn.execute("UPDATE runs SET status = 'running', owner = ?, started_at = ? WHERE id = ?", (owner, now, row[0]))
                run = _run_from_row(row)
                run = Run(**{**run.__dict__, "status": RunStatus.RUNNING, "started_at": now})
                claimed.append(ClaimedRun(run, row[14]))
            return claimed

        return self.write(op)

    def release_claims(self, run_ids: list[str], owner: str) -> None:
        """Put claimed runs that never started back in the queue, in their old place."""
        if not run_ids:
            return
        marks = ",".join("?" * len(run_ids))
        self.write(lambda conn: conn.execute(
            f"UPDATE runs SET status = 'queued', owner = NULL, started_at = NULL WHERE owner = ? AND status = 'running' AND id IN ({marks})",
            (owner, *run_ids),
        ))

    def set_pgid(self, run_id: str, pgid: int | None) -> None:
        self._ensure_writer()
        self._put(_Op(lambda conn: conn.execute("UPDATE runs SET pgid = ? WHERE id = ?", (pgid, run_id)), wait=False))

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        expect: tuple[str, ...] = ("running",),
        scrub: bool = True,
        wait: bool = True,
    ) -> bool | None:
        """End a run and write its terminal event in one transaction.

        Returns False (and writes nothing) if the run was no longer in one of
        ``expect`` - e.g. already marked ``lost`` by a sweeper.  ``scrub``
        rewrites the stored plan without secret argument values (callers that
        know the plan has none skip that work); with ``wait=False`` the end is
        queued behind the run's own events and the call returns at once.
        """
        now = time.time()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT status, started_at, created_at FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row[0] not in expect:
                return False
            started = row[1] or row[2]
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, exit_code = ?, reason = ?, pgid = NULL WHERE id = ?",
                (status.value, now, exit_code, reason, run_id),
            )
            if scrub:
                stored = conn.execute("SELECT plan FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
                plan = json.loads(stored)
                if plan.get("secret_args"):
                    conn.execute("UPDATE runs SET plan = ? WHERE id = ?", (_dumps(_scrub_plan(plan)), run_id))
            payload = {"status": status.value, "exit_code": exit_code, "duration": round(now - started, 6)}
            if reason:
                payload["reason"] = reason
            payload.update(data or {})
            conn.execute(
                "INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, ?, ?)",
                (run_id, EventType.RUN_FINISHED.value, now, _dumps(payload)),
            )
            return True

        if not wait:
            self.write_later(op)
            return None
        return self.write(op)

    def request_cancel(self, run_id: str, subject: str) -> Run:
        """Cancel a queued run now; ask the owner of a running run to stop it."""
        now = time.time()

        def op(conn: sqlite3.Connection) -> Run:
            # PostgreSQL: lock the row, so a claim on another connection either skips it or has committed.
            run = self._get_run(conn, run_id, self._FOR_UPDATE)
            if run is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            if run.status is RunStatus.QUEUED:
                reason = f"cancelled by {subject} before it started"
                conn.execute(
                    "UPDATE runs SET status = 'cancelled', finished_at = ?, reason = ? WHERE id = ?", (now, reason, run_id)
                )
                conn.execute(
                    "INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, ?, ?)",
                    (run_id, EventType.RUN_FINISHED.value, now, _dumps({"status": "cancelled", "exit_code": None, "duration": 0.0, "reason": reason})),
                )
            elif run.status is RunStatus.RUNNING:
                first = conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ? AND cancel_requested = 0", (run_id,)).rowcount
                if first:
                    conn.execute(
                        "INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, ?, ?)",
                        (run_id, EventType.RUN_CANCEL_REQUESTED.value, now, _dumps({"by": subject})),
                    )
            else:
                raise RunFinished(f"run {run_id} already ended ({run.status.value})", run_status=run.status.value)
            updated = self._get_run(conn, run_id)
            assert updated is not None
            return updated

        return self.write(op)

    def cancel_requested(self, run_ids: list[str]) -> set[str]:
        if not run_ids:
            return set()
        marks = ",".join("?" * len(run_ids))
        rows = self.reader().execute(f"SELECT id FROM runs WHERE cancel_requested = 1 AND id IN ({marks})", run_ids).fetchall()
        return {r[0] for r in rows}

    # -- owners and recovery ---------------------------------------------------

    def register_owner(self, owner: str, host: str, pid: int) -> None:
        now = time.time()
        self.write(lambda conn: conn.execute(
            "INSERT INTO owners(owner, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(owner) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
            "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
            (owner, host, pid, now, now),
        ))

    def heartbeat(self, owner: str) -> bool:
        """Say ``owner`` is alive; False if its row is gone (another process declared it dead)."""
        now = time.time()
        return bool(self.write(lambda conn: conn.execute("UPDATE owners SET heartbeat_at = ? WHERE owner = ?", (now, owner)).rowcount))

    def unregister_owner(self, owner: str) -> None:
        self.write(lambda conn: conn.execute("DELETE FROM owners WHERE owner = ?", (owner,)))

    def owners(self) -> list[tuple[str, str, int, float]]:
        return self.reader().execute("SELECT owner, host, pid, heartbeat_at FROM owners").fetchall()

    def mark_lost(self, is_dead: Callable[[str, str, int, float | None], bool], reason: str) -> list[tuple[str, int | None]]:
        """End every running run whose owner ``is_dead``; returns ``(run_id, pgid)`` of each.

        ``is_dead(owner, host, pid, heartbeat_at)`` decides; runs whose owner
        row is gone are passed ``heartbeat_at=None``.
        """
        now = time.time()

        def op(conn: sqlite3.Connection) -> list[tuple[str, int | None]]:
            skew = self._clock_skew(conn)  # heartbeats in the database's clock, read in ours
            owners = {row[0]: (row[1], row[2], row[3] + skew) for row in conn.execute("SELECT owner, host, pid, heartbeat_at FROM owners")}
            lost = []
            rows = conn.execute("SELECT id, owner, pgid, started_at FROM runs WHERE status = 'running'").fetchall()
            dead_owners = set()
            for run_id, owner, pgid, started in rows:
                host, pid, beat = owners.get(owner, ("", 0, None))
                if not is_dead(owner or "", host, pid, beat):
                    continue
                dead_owners.add(owner)
                conn.execute(
                    "UPDATE runs SET status = 'lost', finished_at = ?, reason = ?, pgid = NULL WHERE id = ?", (now, reason, run_id)
                )
                conn.execute(
                    "INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, ?, ?)",
                    (run_id, EventType.RUN_FINISHED.value, now, _dumps({"status": "lost", "exit_code": None, "duration": round(now - (started or now), 6), "reason": reason})),
                )
                lost.append((run_id, pgid))
            for owner, (host, pid, beat) in owners.items():
                if owner not in dead_owners and is_dead(owner, host, pid, beat):
                    dead_owners.add(owner)
            for owner in dead_owners:
                conn.execute("DELETE FROM owners WHERE owner = ?", (owner,))
            return lost

        return self.write(op)

    # -- events ----------------------------------------------------------------

    def events_after(self, after: int, run_id: str | None = None, limit: int = 1000, conn: sqlite3.Connection | None = None) -> list[Event]:
        conn = conn or self.reader()
        if run_id is None:
            rows = conn.execute("SELECT id, run_id, type, ts, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        else:
            rows = conn.execute(
                "SELECT id, run_id, type, ts, data FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?", (run_id, after, limit)
            ).fetchall()
        return [Event(*r) for r in rows]

    def control_events_after(self, after: int, upto: int, conn: sqlite3.Connection | None = None) -> list[Event]:
        """Every event but step output in ``(after, upto]`` (served by the partial index on non-output events)."""
        conn = conn or self.reader()
        rows = conn.execute(
            "SELECT id, run_id, type, ts, data FROM events WHERE id > ? AND id <= ? AND type <> 'step.output' ORDER BY id", (after, upto)
        ).fetchall()
        return [Event(*r) for r in rows]

    def _clock_skew(self, conn: sqlite3.Connection) -> float:
        """Our clock minus the one heartbeats are written in (SQLite: ours, so 0)."""
        return 0.0

    def events_sequence(self) -> int:
        """The highest event id ever handed out (pruned events included)."""
        row = self.reader().execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0

    def watch(self, wakeups: Any) -> Any:
        """What the event poller waits on and asks whether anything changed (see eventhub)."""
        return _DataVersionWatch(self, wakeups)

    def last_event_id(self, conn: sqlite3.Connection | None = None) -> int:
        conn = conn or self.reader()
        row = conn.execute("SELECT max(id) FROM events").fetchone()
        return row[0] or 0

    def iter_events(self, run_id: str, batch: int = 1000) -> Iterator[Event]:
        after = 0
        while True:
            events = self.events_after(after, run_id, batch)
            yield from events
            if len(events) < batch:
                return
            after = events[-1].id

    def digest_key(self) -> bytes:
        value = self.meta("digest_key")
        if value is None:
            raise StorageError("the database has no digest key; it was not migrated")
        return bytes.fromhex(value)

    # -- stream tickets --------------------------------------------------------

    def create_ticket(self, digest: str, subject: str, run_id: str | None, expires_at: float) -> None:
        self.write(lambda conn: conn.execute(
            "INSERT INTO stream_tickets(digest, subject, run_id, expires_at) VALUES (?, ?, ?, ?)", (digest, subject, run_id, expires_at)
        ))

    def redeem_ticket(self, digest: str) -> tuple[str, str | None, float] | None:
        """Take a ticket out (single use): ``(subject, run_id, expires_at)`` or None."""

        def op(conn: sqlite3.Connection) -> tuple[str, str | None, float] | None:
            row = conn.execute("SELECT subject, run_id, expires_at FROM stream_tickets WHERE digest = ?", (digest,)).fetchone()
            conn.execute("DELETE FROM stream_tickets WHERE digest = ? OR expires_at < ?", (digest, time.time()))
            return tuple(row) if row else None  # type: ignore[return-value]

        return self.write(op)

    # -- housekeeping ----------------------------------------------------------

    def add_prune_listener(self, listener: Callable[[sqlite3.Connection], Any]) -> None:
        """``listener(conn)`` runs in the pruning transaction before anything is deleted."""
        self._prune_listeners.append(listener)

    def prune(self, max_history: int) -> int:
        """Delete the oldest finished runs beyond ``max_history`` and their events."""
        return self.write(lambda conn: self.prune_in(conn, max_history))

    def prune_in(self, conn: sqlite3.Connection, max_history: int) -> int:
        """Prune inside a write transaction; queued and running runs are never touched.

        When nothing is due this is one probe of the ``runs_finished_seq``
        index, so it is cheap enough to run after every finished run.
        """
        row = conn.execute(
            f"SELECT seq FROM runs WHERE {_FINISHED} ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_history,)
        ).fetchone()
        if row is None:
            return 0
        for listener in self._prune_listeners:
            listener(conn)
        victims = [r[0] for r in conn.execute(f"SELECT id FROM runs WHERE {_FINISHED} AND seq <= ?", (row[0],))]
        for chunk in range(0, len(victims), 500):
            part = victims[chunk : chunk + 500]
            qs = ",".join("?" * len(part))
            conn.execute(f"DELETE FROM events WHERE run_id IN ({qs})", part)
            conn.execute(f"DELETE FROM idempotency WHERE run_id IN ({qs})", part)
            conn.execute(f"DELETE FROM runs WHERE id IN ({qs})", part)
        return len(victims)

    def expire_idempotency(self, older_than: float) -> None:
        cutoff = time.time() - older_than
        self.write(lambda conn: conn.execute("DELETE FROM idempotency WHERE created_at < ?", (cutoff,)))

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Checkpoint the WAL so it cannot grow without bound behind long readers."""
        return self.reader().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()


class _DataVersionWatch:
    """SQLite: ``PRAGMA data_version`` changes only when another connection commits.

    An idle server therefore runs no query on the events table; commits of
    this process and of the other processes on the host wake the waiter at
    once (:mod:`flwd_server.events.wakeups`), polling every ``timeout`` is the fallback.
    """

    def __init__(self, store: Store, wakeups: Any) -> None:
        self.wakeups = wakeups
        self.conn = store.connect()
        self._version: int | None = None

    def wait(self, timeout: float) -> None:
        self.wakeups.wait(timeout)

    def changed(self) -> bool:
        current = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if current == self._version:
            return False
        self._version = current
        return True

    def reset(self) -> None:
        self._version = None

    def close(self) -> None:
        self.conn.close()


def open_store(settings: Any) -> Store:
    """The store the settings ask for: PostgreSQL for ``db_url``, else SQLite at ``db_path``."""
    if settings.db_url:
        from .postgres import PgStore  # psycopg loads only for PostgreSQL

        return PgStore(settings.db_url, pool_size=settings.db_pool_size)
    return Store(settings.resolved_db_path, settings.db_synchronous)


_PLANS: dict[str, dict[str, Any]] = {}


def _parse_plan(text: str) -> dict[str, Any]:
    """Parse a stored plan; identical plans (the same job and args) are parsed once.

    The result is shared: callers must not modify it.
    """
    plan = _PLANS.get(text)
    if plan is None:
        plan = json.loads(text)
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[text] = plan
    return plan


def _scrub_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Drop secret argument values once a run has ended: nothing needs them any more."""
    secret = set(plan.get("secret_args") or [])
    if not secret:
        return plan
    args = {k: ("***" if k in secret else v) for k, v in (plan.get("args") or {}).items()}
    return {**plan, "args": args}


def body_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")
