"""What both backends share: schema migration, events, stream tickets, housekeeping.

A :class:`Store` is the group-commit :class:`~.writer.Writer` plus the tables
it writes (:class:`~.run_records.RunRecords`, :class:`~.owners.OwnerRecords`,
and the events and tickets here).  The SQL is written once, in SQLite's
spelling; :class:`~.sqlite.SQLiteStore` runs it as it is and
:class:`~.postgres.PostgresStore` translates it (:mod:`.postgres_sql`).
Readers never share a connection across threads or processes: every
connection is created lazily and tied to the pid, so nothing opened before a
fork is used after it.
"""

from __future__ import annotations

import abc
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import StorageError
from ..forksafe import reset_after_fork
from ..models import Event, EventType
from . import schema
from .approval_records import ApprovalRecords
from .artifacts import release_in as release_artifacts
from .chain import active_chain, insert_events
from .deliveries import DeliveryRecords
from .event_filter import EventFilter
from .owners import OwnerRecords
from .queries import EXPORT_HOLD, SET_META, dumps
from .run_records import RunRecords
from .writer import Writer


class Store(Writer, RunRecords, ApprovalRecords, OwnerRecords, DeliveryRecords):
    """Runs and events; one instance per process is enough."""

    dialect: str
    notifies_peers = False  # PostgreSQL's NOTIFY wakes other processes; SQLite needs wake-up datagrams

    def _init_common(self) -> None:
        self._reset_after_fork()
        self._init_writer()
        self._prune_listeners: list[Callable[[Any], Any]] = []
        self._queued_count = 0
        self._queued_checked = 0.0
        reset_after_fork(self, "_reset_after_fork")

    def _reset_after_fork(self) -> None:
        """Forget every thread and connection inherited from a parent process."""
        self._reset_writer()

    path: str  # the database as logs and messages name it: a file, or a URL without its password

    @property
    def label(self) -> str:
        """The database as logs and messages name it (never with a password)."""
        return self.path

    @property
    @abc.abstractmethod
    def wakeup_key(self) -> str:
        """What the processes sharing this database have in common (names their wake-up sockets)."""

    @abc.abstractmethod
    def reader(self) -> Any:
        """A connection for reads by this thread (never shared across processes)."""

    @abc.abstractmethod
    def close_reader(self) -> None:
        """Let go of this thread's read connection, if it has one of its own."""

    def close(self) -> None:
        """Flush and stop the writer (used on shutdown and by tests)."""
        self._stop_writer()
        self.close_reader()

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
            if version > schema.SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StorageError(
                    f"{self.label}: schema version {version} is newer than this flwd ({schema.SCHEMA_VERSION}); upgrade flwd"
                )
            for target in range(version + 1, schema.SCHEMA_VERSION + 1):
                for statement in schema.statements(target):
                    conn.execute(statement)
                conn.execute(SET_META, ("schema_version", str(target)))
            if not conn.execute("SELECT 1 FROM meta WHERE key = 'digest_key'").fetchone():
                conn.execute("INSERT INTO meta(key, value) VALUES ('digest_key', ?)", (secrets.token_hex(32),))
            conn.execute("COMMIT")
            self._self_check(conn)
            return schema.SCHEMA_VERSION
        except self.errors as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(f"{self.label}: cannot prepare the database: {exc}") from None
        finally:
            conn.close()

    def _check_connection(self, conn: Any) -> None:
        """Refuse a database this backend cannot work with (before anything is written)."""

    def _begin_migration(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _self_check(self, conn: Any) -> None:
        """Prove, after migrating, that the database works as this backend needs."""

    def meta(self, key: str) -> str | None:
        row = self.reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- events ----------------------------------------------------------------

    def events_after(self, after: int, run_id: str | None = None, limit: int = 1000, conn: Any = None) -> list[Event]:
        conn = conn or self.reader()
        if run_id is None:
            rows = conn.execute(
                "SELECT id, run_id, type, ts, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT id, run_id, type, ts, data FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                (run_id, after, limit),
            ).fetchall()
        return [Event(*r) for r in rows]

    def events_matching(
        self, after: int, event_filter: EventFilter, limit: int = 1000, conn: Any = None
    ) -> list[Event]:
        """Events with ``id > after`` that pass ``event_filter``, in id order: filtered here, not in Python."""
        conn = conn or self.reader()
        join, where, params = event_filter.where(self.dialect)
        rows = conn.execute(
            f"SELECT e.id, e.run_id, e.type, e.ts, e.data FROM events e{join} WHERE e.id > ? AND {where} "
            "ORDER BY e.id LIMIT ?",
            (after, *params, limit),
        ).fetchall()
        return [Event(*r) for r in rows]

    def run_origins(self, run_ids: list[str]) -> dict[str, tuple[str, str]]:
        """``run id -> (job, source)`` of the runs that exist among ``run_ids``."""
        out: dict[str, tuple[str, str]] = {}
        for start in range(0, len(run_ids), 500):
            part = run_ids[start : start + 500]
            rows = self.reader().execute(
                f"SELECT id, job, source FROM runs WHERE id IN ({','.join('?' * len(part))})", part
            )
            out.update((row[0], (row[1], row[2])) for row in rows)
        return out

    def control_events_after(self, after: int, upto: int, conn: Any = None) -> list[Event]:
        """Every event but step output in ``(after, upto]`` (served by the partial index on non-output events)."""
        conn = conn or self.reader()
        rows = conn.execute(
            "SELECT id, run_id, type, ts, data FROM events WHERE id > ? AND id <= ? AND type <> 'step.output' ORDER BY id",
            (after, upto),
        ).fetchall()
        return [Event(*r) for r in rows]

    @abc.abstractmethod
    def events_sequence(self) -> int:
        """The highest event id ever handed out (pruned events included)."""

    @abc.abstractmethod
    def watch(self, wakeups: Any) -> Any:
        """What the event poller waits on and asks whether anything changed (see events.hub)."""

    def last_event_id(self, conn: Any = None) -> int:
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

    def create_ticket(
        self, digest: str, subject: str, run_id: str | None, expires_at: float, scopes: str | None = None
    ) -> None:
        """Store a ticket; the expired ones go in the same transaction, so the table holds only live ones."""

        def op(conn: Any) -> None:
            conn.execute("DELETE FROM stream_tickets WHERE expires_at < ?", (time.time(),))
            conn.execute(
                "INSERT INTO stream_tickets(digest, subject, run_id, expires_at, scopes) VALUES (?, ?, ?, ?, ?)",
                (digest, subject, run_id, expires_at, scopes),
            )

        self.write(op)

    def find_ticket(self, digest: str) -> tuple[str, str | None, float, str | None] | None:
        """A live ticket's ``(subject, run_id, expires_at, scopes)``, or None; a read, since a ticket is used until
        it expires (an EventSource reconnects with the same URL).  ``scopes`` None: plain ``runs:read``."""
        row = (
            self.reader()
            .execute(
                "SELECT subject, run_id, expires_at, scopes FROM stream_tickets WHERE digest = ? AND expires_at >= ?",
                (digest, time.time()),
            )
            .fetchone()
        )
        return tuple(row) if row else None  # type: ignore[return-value]

    # -- housekeeping ----------------------------------------------------------

    def add_prune_listener(self, listener: Callable[[Any], Any]) -> None:
        """``listener(conn)`` runs in the pruning transaction before anything is deleted."""
        self._prune_listeners.append(listener)

    def prune(self, max_history: int) -> int:
        """Delete the oldest finished runs beyond ``max_history`` and their events."""
        return self.write(lambda conn: self.prune_in(conn, max_history))

    def prune_in(self, conn: Any, max_history: int) -> int:
        """Prune inside a write transaction; queued and running runs are never touched.

        When nothing is due this is one probe of the ``runs_finished_seq``
        index, so it is cheap enough to run after every finished run.
        """
        row = conn.execute(
            f"SELECT seq FROM runs WHERE {schema.FINISHED_RUNS} ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_history,)
        ).fetchone()
        if row is None or _export_holds(conn):
            return 0
        for listener in self._prune_listeners:
            listener(conn)
        victims = [
            r[0] for r in conn.execute(f"SELECT id FROM runs WHERE {schema.FINISHED_RUNS} AND seq <= ?", (row[0],))
        ]
        for chunk in range(0, len(victims), 500):
            part = victims[chunk : chunk + 500]
            qs = ",".join("?" * len(part))
            _record_pruned(conn, part)
            conn.execute(f"DELETE FROM events WHERE run_id IN ({qs})", part)
            release_artifacts(conn, part)
            conn.execute(f"DELETE FROM idempotency WHERE run_id IN ({qs})", part)
            conn.execute(f"DELETE FROM callback_deliveries WHERE run_id IN ({qs})", part)
            conn.execute(f"DELETE FROM runs WHERE id IN ({qs})", part)
        return len(victims)

    def expire_idempotency(self, older_than: float) -> None:
        cutoff = time.time() - older_than
        self.write(lambda conn: conn.execute("DELETE FROM idempotency WHERE created_at < ?", (cutoff,)))

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Keep the write-ahead log from growing without bound (a backend that needs it does it)."""
        return (0, 0, 0)


def _export_holds(conn: Any) -> bool:
    """Whether an export is under way (store/export.py): pruning waits, so the export's chains stay whole.

    Read only when something is due.  A hold lapses at its time, so an export that died never blocks retention.
    """
    now = time.time()
    holds = conn.execute("SELECT key, value FROM meta WHERE key LIKE ?", (EXPORT_HOLD + "%",)).fetchall()
    lapsed = [key for key, until in holds if float(until) <= now]
    if lapsed:
        conn.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(lapsed))})", lapsed)
    return len(lapsed) < len(holds)


def _record_pruned(conn: Any, run_ids: list[str]) -> None:
    """Before runs are pruned: a ``runs.pruned`` event (no run) naming each and its chain's last hash.

    The chain of events without a run thus keeps what was removed, and the
    hashes a copy exported earlier can be checked against.
    """
    qs = ",".join("?" * len(run_ids))
    heads = dict(
        conn.execute(
            f"SELECT run_id, hash FROM events WHERE id IN (SELECT max(id) FROM events WHERE run_id IN ({qs}) "
            "GROUP BY run_id)",
            run_ids,
        ).fetchall()
    )
    runs = [{"id": run_id, "hash": heads.get(run_id)} for run_id in run_ids]
    insert_events(conn, [(None, EventType.RUNS_PRUNED.value, time.time(), dumps({"runs": runs}))])
    chain = active_chain(conn)
    if chain is not None:
        chain.forget(run_ids)
