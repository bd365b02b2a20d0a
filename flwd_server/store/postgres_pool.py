"""The reader connections of one process: psycopg_pool's ``ConnectionPool``, and what flwd adds to it.

The pool (by psycopg's author) does the hard parts: its ``close()`` leaves a
connection another thread has borrowed alone (it is closed when given back,
never under a running query: that is a use-after-free in libpq), it replaces
broken and old connections, and it lets idle ones go.  flwd adds:

* **Opened on first use, in its own process.**  The pool starts threads when it
  opens, and a store is often made before gunicorn forks its workers.  The
  store's at-fork hook gives the child a new, unopened :class:`ReaderPool`; a
  pool opens and closes only in the process that made it.
* **A database that cannot be reached fails a read at once** (a 503), as a
  direct connect would.  The pool connects in a background thread and would let
  the reader wait out the whole 30 s; :class:`PooledConnection` records whether
  the newest attempt failed, and a waiting reader that sees it gives up with
  that error.  ``reconnect_timeout`` is short: after an outage the pool stops
  backing off soon, and the next read starts a new attempt.
* **A connection the server closed** (a restart, a failover) makes the pool
  drop its idle ones, probably dead as well (``drain``), and a read on it is
  repeated once, on a new connection.  The pool's ``check`` option is not used:
  it costs a round trip before every read, and it sleeps 1, 2, 4 ... s between
  dead connections, so after a restart a read could wait out its whole timeout.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..errors import StorageError
from .postgres_sql import PgConnection, Result

WAIT = 30.0  # seconds a reader waits for a free connection
RECONNECT = 5.0  # seconds the pool retries a connection that failed; then the next read tries anew


def first_line(exc: BaseException) -> str:
    """The first line of an error (libpq's messages go on with hints and context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ConnectOutcome:
    """The newest attempt of one pool to connect: ``error`` while it failed, None while it runs or after it worked."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: str | None = None


class PooledConnection(psycopg.Connection):
    """A connection of a :class:`ReaderPool`: says how each attempt to connect ended, keeps its store-SQL view."""

    sql: PgConnection | None = None  # made on first borrow: one cursor per connection, reused

    @classmethod
    def connect(cls, conninfo: str = "", *, outcome: ConnectOutcome | None = None, **kwargs: Any) -> Self:
        if outcome is not None:
            outcome.error = None
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            if outcome is not None:
                outcome.error = first_line(exc)
            raise


class ReaderPool:
    """At most ``size`` autocommit connections shared by the threads of one process, opened on first use."""

    def __init__(self, url: str, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self.outcome = ConnectOutcome()
        self._lock = threading.Lock()
        self._opened = False
        self._closed = False
        self.pool = ConnectionPool(
            url,
            open=False,  # threads start on first use, in the process that uses the pool
            min_size=0,
            max_size=size,
            timeout=WAIT,
            name="flwd-readers",
            connection_class=PooledConnection,
            kwargs={"autocommit": True, "connect_timeout": 10, "application_name": "flwd", "outcome": self.outcome},
            reconnect_timeout=RECONNECT,
        )

    def _open(self) -> ConnectionPool:
        if not self._opened:
            with self._lock:
                if self._closed:
                    raise PoolClosed("the store is closed")
                if os.getpid() != self.pid:
                    raise RuntimeError(
                        "a reader pool is used only by the process that made it (a forked child makes its own)"
                    )
                self.pool.open()
                self._opened = True
        return self.pool

    def _borrow(self) -> PooledConnection:
        """A connection; an error as soon as the newest attempt to connect failed, or after ``WAIT`` s while all are busy."""
        pool = self._open()
        deadline = time.monotonic() + WAIT
        step = 0.05
        while True:
            try:
                return pool.getconn(timeout=step)
            except PoolTimeout:
                failed = self.outcome.error
                if failed is not None:
                    raise psycopg.OperationalError(failed) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError(
                        f"no free database connection after {WAIT:g} s (db_pool_size: {self.size})"
                    ) from None
                step = min(step * 2, 1.0, left)

    @contextlib.contextmanager
    def connection(self) -> Iterator[PgConnection]:
        """Borrow a connection for a statement or a transaction; it goes back even when they failed."""
        raw = self._borrow()
        try:
            if raw.sql is None:
                raw.sql = PgConnection(raw)
            yield raw.sql
        except BaseException:
            if raw.closed:
                self.drain()  # the server closed it: the idle ones are probably closed too
            elif raw.sql is not None and raw.sql.in_transaction:
                with contextlib.suppress(Exception):
                    raw.rollback()
            raise
        finally:
            self.pool.putconn(raw)

    def drain(self) -> None:
        """Close the idle connections (a borrowed one when it is given back); new ones replace them."""
        if self._opened and not self._closed:
            self.pool.drain()

    def close(self) -> None:
        """Refuse new borrowers, close the idle connections; a borrowed one is closed when it is given back."""
        with self._lock:
            self._closed = True
            opened = self._opened
        if opened and os.getpid() == self.pid:
            self.pool.close()


class PooledReader:
    """What ``store.reader()`` returns: each ``execute`` borrows a pooled connection for one statement."""

    in_transaction = False

    def __init__(self, pool: ReaderPool) -> None:
        self.pool = pool

    def execute(self, sql: str, params: Any = ()) -> Result:
        conn: PgConnection | None = None
        try:
            try:
                with self.pool.connection() as conn:
                    return conn.execute(sql, params)
            except psycopg.OperationalError:
                if conn is None or not conn.closed:
                    raise
                # The server closed it while it was idle (a restart, a failover): a read is safe to
                # repeat, once; the pool has dropped its other idle connections, so this one is new.
                with self.pool.connection() as conn:
                    return conn.execute(sql, params)
        except psycopg.OperationalError as exc:  # the server is away: a 503, not a 500
            raise StorageError(f"the database cannot be read: {first_line(exc)}") from None

    def executemany(self, sql: str, seq: Any) -> Result:
        with self.pool.connection() as conn:
            return conn.executemany(sql, seq)
