"""The store on SQLite (WAL): the embedded default, safe across threads and worker processes.

* Readers use one connection per thread, created lazily and tied to the pid.
* Event ids come from ``INTEGER PRIMARY KEY AUTOINCREMENT``; SQLite has one
  writer at a time, so ids are strictly increasing in commit order and a
  reader that asks for ``id > last`` never misses one.
* The writers of the processes sharing a database take turns through a
  ``flock`` on ``DATABASE.writelock`` before ``BEGIN IMMEDIATE``.
* An idle event poller runs no query: ``PRAGMA data_version`` tells it whether
  another connection committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import StorageError
from .backend import Store


class SQLiteStore(Store):
    """Runs and events in one SQLite file."""

    dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str = "normal",
        busy_timeout: float = 30.0,
        queue_size: int = 20000,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.queue_size = queue_size
        self._init_common()

    @property
    def wakeup_key(self) -> str:
        """What the processes sharing this database have in common (names their wake-up sockets)."""
        return os.path.abspath(self.path)

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
        super()._reset_after_fork()
        self._local = threading.local()
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

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    # -- schema ----------------------------------------------------------------

    def _check_connection(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"{self.path}: SQLite could not enable WAL (got {mode}); use a local filesystem")

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
            raise StorageError(
                f"{self.path}: a write was not visible to a second connection; WAL does not work on this filesystem"
            )

    # -- the writer ------------------------------------------------------------

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
        try:
            lock = self._write_lock()
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as exc:  # the disk (read-only, full, gone), as a failed write: the writer retries, lives on
            raise sqlite3.OperationalError(f"cannot take the write lock {self.path}.writelock: {exc.strerror}") from exc
        try:
            self._apply_locked(conn, batch)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    # -- events and housekeeping -------------------------------------------------

    def events_sequence(self) -> int:
        """The highest event id ever handed out (pruned events included)."""
        row = self.reader().execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0

    def watch(self, wakeups: Any) -> Any:
        """What the event poller waits on and asks whether anything changed (see eventhub)."""
        return DataVersionWatch(self, wakeups)

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Checkpoint the WAL so it cannot grow without bound behind long readers."""
        return self.reader().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()


class DataVersionWatch:
    """SQLite: ``PRAGMA data_version`` changes only when another connection commits.

    An idle server therefore runs no query on the events table; commits of
    this process and of the other processes on the host wake the waiter at
    once (:mod:`flwd_server.events.wakeups`), polling every ``timeout`` is the fallback.
    """

    def __init__(self, store: SQLiteStore, wakeups: Any) -> None:
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
