"""The group-commit writer: one thread per process owns the only writing connection.

Every write is an operation queued to it; it runs whatever is queued in one
transaction (group commit), each operation inside its own savepoint so one
failure never takes the others with it.  Step output is queued without waiting
(bounded queue: a job that prints faster than the disk writes is slowed down,
memory is not); state changes wait for their commit.

The backends hook in where they differ: :meth:`Writer.connect` (the
connection), :meth:`Writer._begin` and :meth:`Writer._commit` (SQLite's
``BEGIN IMMEDIATE``; PostgreSQL's advisory lock and ``NOTIFY``) and
:meth:`Writer._apply` (SQLite takes a file lock around the transaction,
PostgreSQL first tries the batch without savepoints).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from threading import Lock as _allocate_lock  # a plain lock: the cheapest thing to block on
from typing import Any

from ..errors import StorageError, Unavailable
from .chain import Chain
from .queries import dumps

log = logging.getLogger("flwd.store")
BATCH = 5000  # most items one transaction takes


class _Op:
    """One queued write that runs ``fn(conn)`` in a savepoint; events are queued as bare tuples.

    A waiting caller blocks on a plain lock that the writer releases: cheaper
    than an Event (which is a Condition and a lock) on every write.
    """

    __slots__ = ("fn", "lock", "result", "error")

    def __init__(self, fn: Callable[[Any], Any], wait: bool) -> None:
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


class Writer(abc.ABC):
    """The write path of a store; :class:`~flwd_server.store.backend.Store` builds on it."""

    errors: tuple[type[BaseException], ...] = ()  # what a failing database raises
    dialect: str  # each backend says ("sqlite", "postgres"): how the audit chain takes event ids
    queue_size: int = 20000

    @abc.abstractmethod
    def connect(self) -> Any:
        """A new connection to the database (the writer's own, or a reader's)."""

    def _init_writer(self) -> None:
        """Called once; :meth:`_reset_writer` runs again in every forked child."""
        self._commit_listeners: list[Callable[[list[tuple]], None]] = []
        self._closed = False

    def _reset_writer(self) -> None:
        """Forget the writer thread and queue inherited from a parent process."""
        self._pending: deque[Any] = deque()
        self._idle = False
        self._wakeup = threading.Event()
        self._room = threading.Condition()
        self._blocked = 0
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._chain = Chain(self.dialect == "postgres")  # the audit trail's heads, kept between batches

    def add_commit_listener(self, listener: Callable[[list[tuple]], None]) -> None:
        """``listener(rows)`` after each commit, with the ``(id, run_id, type, ts, data, hash)`` rows of the
        events it stored, in id order (the event hub publishes them without reading them back)."""
        self._commit_listeners.append(listener)

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="flwd-store-writer", daemon=True)
                self._writer.start()

    def park_writer(self) -> None:
        """Commit what is queued and stop the writer thread; the next write starts another.

        For a host that loads the app and then forks in C (uWSGI): a thread alive
        at such a fork can leave the child's interpreter locked, so none may be.
        """
        with self._writer_lock:
            writer = self._writer
            if writer is not None and writer.is_alive() and writer is not threading.current_thread():
                self._pending.append(_STOP)
                self._wakeup.set()
                writer.join(timeout=10)
            if writer is None or not writer.is_alive():
                self._writer = None

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
                    self._room.wait_for(
                        lambda: (
                            len(self._pending) < self.queue_size or self._writer is None or not self._writer.is_alive()
                        ),
                        timeout=60,
                    )
                finally:
                    self._blocked -= 1
        self._pending.append(item)
        if self._idle:
            self._wakeup.set()
        return True

    def write(self, fn: Callable[[Any], Any]) -> Any:
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

    def write_later(self, fn: Callable[[Any], Any]) -> None:
        """Queue ``fn(conn)`` for the writer thread without waiting for it (a failure is logged)."""
        if self._closed:
            return

        def logged(conn: Any) -> Any:
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
        self._put((run_id, type, ts or time.time(), dumps(data)))

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
        stop = len(batch) < BATCH and bool(pending) and pending[0] is _STOP
        if stop:
            pending.popleft()
        return batch, stop

    def _take_more(self, batch: list[Any]) -> None:
        """Move what is queued into ``batch`` (up to 5,000 items, never past a stop marker)."""
        pending = self._pending
        while pending and len(batch) < BATCH and pending[0] is not _STOP:
            batch.append(pending.popleft())
        if self._blocked:
            with self._room:
                self._room.notify_all()

    def _write_loop(self) -> None:
        conn: Any = None
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
        for op in batch:
            if type(op) is _Op:
                op.error = error
                op.finish()

    def _apply(self, conn: Any, batch: list[Any]) -> None:
        """Commit one batch (backends wrap this: a file lock, an optimistic first try)."""
        self._apply_locked(conn, batch)

    def _begin(self, conn: Any) -> None:
        """Open a write transaction (SQLite: take the database's write lock now)."""
        conn.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _apply_locked(self, conn: Any, batch: list[Any]) -> None:
        self._begin(conn)
        self._run_batch(conn, batch, savepoints=True)
        self._commit(conn)

    def _run_batch(self, conn: Any, batch: list[Any], savepoints: bool) -> None:
        """Run a batch inside the open transaction: events in runs of one ``executemany``, each
        operation in its own savepoint (its failure is its own) or, without, raising at the first.
        Every event, queued or inserted by an operation, is hashed onto its chain (store/chain.py)."""
        pending: list[tuple] = []
        chain = self._chain
        chain.begin(conn)
        try:
            for op in batch:
                if type(op) is tuple:
                    pending.append(op)
                    continue
                if pending:
                    chain.insert(pending)
                    pending = []
                if not savepoints:
                    op.result, op.error = op.fn(conn), None
                    continue
                conn.execute("SAVEPOINT op")
                mark = len(chain.inserted)
                try:
                    op.result, op.error = op.fn(conn), None
                    conn.execute("RELEASE op")
                except Exception as exc:  # this op's own failure; the rest of the batch goes on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    chain.invalidate()  # its events are gone: heads and ids are read again
                    del chain.inserted[mark:]
                    op.error = exc
            if pending:
                chain.insert(pending)
        except BaseException:
            chain.invalidate()  # the transaction will be rolled back
            raise
        finally:
            chain.end()

    def _commit_batch(self, conn: Any, batch: list[Any]) -> Any:
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
                self._chain.invalidate()  # nothing of this batch was stored
                if conn is not None:
                    with contextlib.suppress(*self.errors):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    with contextlib.suppress(*self.errors):
                        conn.close()
                    conn = None
                attempts += 1
                error = StorageError(f"the database cannot be written: {exc}")
                for op in batch:
                    if type(op) is _Op and op.lock is not None:
                        op.error = error
                        op.finish()
                batch = [op for op in batch if type(op) is tuple or op.lock is None]
                if attempts >= 30:
                    log.error(
                        "database write failed %d times (%s); %d queued writes dropped", attempts, exc, len(batch)
                    )
                    return None
                if batch:
                    log.warning("database write failed (%s); retrying %d queued writes", exc, len(batch))
                    time.sleep(min(0.1 * attempts, 1.0))
                    # Callers that queued meanwhile go into the retry: each learns within one
                    # pause whether the disk has room, instead of waiting out every retry.
                    self._take_more(batch)
                continue
            for op in batch:
                if type(op) is not tuple:
                    op.finish()
            break
        rows, self._chain.inserted = self._chain.inserted, []
        for listener in self._commit_listeners:
            try:
                listener(rows)
            except Exception:  # a listener never breaks the writer
                log.exception("commit listener failed")
        return conn

    def _stop_writer(self) -> None:
        """Flush what is queued and stop the writer thread; nothing is queued after this."""
        writer = self._writer
        self._closed = True  # from now on nothing is queued (and no writer restarted)
        if writer is not None and writer.is_alive():
            self._pending.append(_STOP)
            self._wakeup.set()
            writer.join(timeout=10)
        # Anything that slipped in behind the stop marker never runs: release its waiter.
        self._fail([item for item in self._pending if type(item) is _Op], Unavailable("the server is shutting down"))
        self._pending.clear()
