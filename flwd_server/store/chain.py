"""The tamper-evident audit trail: every event's hash chains it to the previous event of its run.

``hash = sha256(previous || int64le(id) || float64le(ts) || run_id "\\n" type "\\n" data)``,
stored as hex, with ``data`` the event's stored JSON text exactly (never serialised
a second time), ``ts`` the stored float and ``previous`` the hash of the run's
previous event (its 32 bytes; 32 zero bytes for its first).  Events without a run form one more
chain (``run_id`` empty), so pruning whole runs leaves every remaining chain
intact.  A last chain runs over the finished runs, in the order they finish:
``sha256(previous || run's hash at run.finished || run_id)``.

Every event is inserted through :func:`insert_events`, in the write transaction,
under the store's write lock (SQLite's ``flock`` and ``BEGIN IMMEDIATE``,
PostgreSQL's advisory lock): it takes the events' ids itself, hashes them and
writes each row once, hash included (no UPDATE, no read-back).  The writer thread
keeps each chain's head between transactions; the ids prove whether that is safe:
when the next id is not the one after the last this writer took, another
process or node has inserted events since, and the heads are read again from the
database.  So the API process's ``run.queued`` and ``run.cancel_requested`` and
the runner's events of the same run extend one chain in commit order.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import sqlite3
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from ..models import EventType

GENESIS = bytes(32)  # the "previous hash" of a chain's first link
_PACK = struct.Struct("<qd").pack
_RUN_FINISHED = EventType.RUN_FINISHED.value
_MAX_HEADS = 10_000  # heads kept between transactions; past this the cache starts again

INSERT_HASHED = "INSERT INTO events(id, run_id, type, ts, data, hash) VALUES (?, ?, ?, ?, ?, ?)"
ROWS_PER_INSERT = 100  # SQLite: rows of one multi-row INSERT (600 parameters; the oldest limit is 999)
_HEAD_OF_RUN = "SELECT hash FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1"
_HEAD_RUNLESS = "SELECT hash FROM events WHERE run_id IS NULL ORDER BY id DESC LIMIT 1"
_HEAD_FINISHED = "SELECT hash FROM run_chain ORDER BY seq DESC LIMIT 1"
_INSERT_FINISHED = "INSERT INTO run_chain(run_id, run_hash, hash) VALUES (?, ?, ?)"
_SQLITE_LAST_ID = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
_PG_NEXT_IDS = "SELECT nextval('events_id_seq') FROM generate_series(1, ?)"
_PG_NEXT_RANGE = f"SELECT min(v), max(v) FROM ({_PG_NEXT_IDS}) AS ids(v)"

_active = threading.local()  # the writer thread's chain, while it runs a batch


def event_hash(previous: bytes, id: int, run_id: str | None, type: str, ts: float, data: str) -> bytes:
    """The chain hash of one event after ``previous`` (see the module docstring)."""
    return hashlib.sha256(previous + _PACK(id, ts) + f"{run_id or ''}\n{type}\n{data}".encode()).digest()


def run_link(previous: bytes, run_id: str, run_hash: bytes) -> bytes:
    """The next link of the chain over finished runs."""
    return hashlib.sha256(previous + run_hash + run_id.encode()).digest()


class Chain:
    """The chains' heads as one writer last left them, and the last event id it took."""

    __slots__ = ("postgres", "conn", "last_id", "heads", "finished_head", "checked", "inserted")

    def __init__(self, postgres: bool, conn: Any = None) -> None:
        self.postgres = postgres
        self.conn = conn
        self.last_id = -1  # unknown: read it (and every head) at the next insert
        self.heads: dict[str | None, bytes] = {}
        self.finished_head: bytes | None = None
        self.checked = False  # the heads were proven current in this transaction
        self.inserted: list[tuple] = []  # ``(id, run_id, type, ts, data, hash)`` rows of this transaction

    def begin(self, conn: Any) -> None:
        """A write transaction starts on ``conn``: :func:`insert_events` on it goes through this chain."""
        if conn is not self.conn:
            self.invalidate()
        self.conn = conn
        self.checked = False
        self.inserted = []
        _active.chain = self

    def end(self) -> None:
        _active.chain = None

    def invalidate(self) -> None:
        """Something was rolled back (or another writer may have written): read the heads again."""
        self.last_id = -1
        self.heads.clear()
        self.finished_head = None
        self.checked = False

    def forget(self, run_ids: Iterable[str]) -> None:
        """Runs were pruned: their heads are gone from the database, so from here too."""
        for run_id in run_ids:
            self.heads.pop(run_id, None)

    def _ids(self, n: int) -> Iterable[int]:
        """``n`` new event ids, ascending; invalidates the heads if another writer took ids since."""
        if self.postgres:
            # One row back, not n: under the write lock nobody else draws ids, so they are contiguous.
            low, high = self.conn.execute(_PG_NEXT_RANGE, (n,)).fetchone()
            ids: Sequence[int] = range(low, high + 1)
            if high - low + 1 != n:  # someone did (a session outside flwd's writers): take them one by one
                ids = sorted(row[0] for row in self.conn.execute(_PG_NEXT_IDS, (n,)).fetchall())
            if ids[0] != self.last_id + 1:
                self.invalidate()
        else:
            if not self.checked:  # SQLite: AUTOINCREMENT never hands out an id twice; we take the next
                row = self.conn.execute(_SQLITE_LAST_ID).fetchone()
                seq = row[0] if row else 0
                if seq != self.last_id:
                    self.invalidate()
                    self.last_id = seq
            ids = range(self.last_id + 1, self.last_id + 1 + n)
        self.checked = True
        if len(self.heads) > _MAX_HEADS:
            self.heads.clear()
        return ids

    def _head(self, run_id: str | None) -> bytes:
        if run_id is None:
            row = self.conn.execute(_HEAD_RUNLESS).fetchone()
        else:
            row = self.conn.execute(_HEAD_OF_RUN, (run_id,)).fetchone()
        return bytes.fromhex(row[0]) if row and row[0] else GENESIS  # events stored before the audit trail have none

    def insert(self, events: list[tuple[str | None, str, float, str]]) -> None:
        """Insert ``(run_id, type, ts, data)`` events, each with its id and hash; extend the chain of finished runs."""
        if not events:
            return
        ids = self._ids(len(events))
        heads = self.heads
        sha256 = hashlib.sha256
        pack = _PACK
        rows = []
        append = rows.append
        finished = []
        for id, (run_id, type, ts, data) in zip(ids, events, strict=True):  # this runs for every line a job prints
            head = heads.get(run_id)
            if head is None:
                head = self._head(run_id)
            head = sha256(head + pack(id, ts) + f"{run_id or ''}\n{type}\n{data}".encode()).digest()
            heads[run_id] = head
            append((id, run_id, type, ts, data, head.hex()))  # not hexdigest(): that finalises the hash again
            if type == _RUN_FINISHED and run_id is not None:
                finished.append((run_id, head))
        if self.postgres:
            self.conn.executemany(INSERT_HASHED, rows)  # one statement over six arrays (postgres_sql.py)
        else:
            _insert_sqlite(self.conn, rows)
        self.inserted.extend(rows)
        self.last_id = rows[-1][0]
        if finished:
            self._finished(finished)

    def _finished(self, finished: list[tuple[str, bytes]]) -> None:
        head = self.finished_head
        if head is None:
            row = self.conn.execute(_HEAD_FINISHED).fetchone()
            head = bytes.fromhex(row[0]) if row else GENESIS
        links = []
        for run_id, run_hash in finished:
            head = run_link(head, run_id, run_hash)
            links.append((run_id, run_hash.hex(), head.hex()))
        self.conn.executemany(_INSERT_FINISHED, links)
        self.finished_head = head


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_rows_sql(count: int) -> str:
    return INSERT_HASHED + ", (?, ?, ?, ?, ?, ?)" * (count - 1)


def _insert_sqlite(conn: Any, rows: list[tuple]) -> None:
    """Insert hashed rows ``ROWS_PER_INSERT`` to a statement: half the CPU of ``executemany``'s
    statement per row (measured 1.3 against 2.5 µs a row; it was the writer's largest cost)."""
    flat = itertools.chain.from_iterable
    for start in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[start : start + ROWS_PER_INSERT]
        conn.execute(_insert_rows_sql(len(part)), list(flat(part)))


def insert_events(conn: Any, events: list[tuple[str | None, str, float, str]]) -> None:
    """Insert ``(run_id, type, ts, data)`` events on ``conn``, in its open write transaction, hashed.

    The one way events are stored: on the writer thread it extends the writer's
    chains; anywhere else (a migration, a test) the heads are read from the database.
    """
    chain = getattr(_active, "chain", None)
    if chain is None or chain.conn is not conn:
        chain = Chain(not isinstance(conn, sqlite3.Connection), conn)
    chain.insert(events)


def active_chain(conn: Any) -> Chain | None:
    """The writer's chain if ``conn`` is the connection of the batch it is running."""
    chain = getattr(_active, "chain", None)
    return chain if chain is not None and chain.conn is conn else None
