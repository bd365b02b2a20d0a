"""Registered sources in the database: the ``sources`` table and a change counter.

Every change bumps ``meta.sources_version`` in the same transaction, so a
worker process learns that another one added, removed or synced a source by
reading one row (see ``SourceRegistry.refresh``).  Writes go through the
store's writer thread (``store.write``), reads through the thread's reader.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict
from ..store import Store
from ..store.queries import UNFINISHED_SQL

VERSION_KEY = "sources_version"


@dataclass(frozen=True)
class SourceRecord:
    name: str
    spec: dict[str, Any]
    created_at: float
    state: dict[str, Any]

    @property
    def origin(self) -> str:
        return self.state.get("origin", "api")


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, '1') "
        "ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)",
        (VERSION_KEY,),
    )


def _record(row: tuple) -> SourceRecord:
    return SourceRecord(name=row[0], spec=json.loads(row[1]), created_at=row[2], state=json.loads(row[3]))


class SourceRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    def version(self) -> int:
        row = self.store.reader().execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
        return int(row[0]) if row else 0

    def all(self) -> list[SourceRecord]:
        rows = (
            self.store.reader()
            .execute("SELECT name, spec, created_at, state FROM sources ORDER BY created_at, name")
            .fetchall()
        )
        return [_record(r) for r in rows]

    def get(self, name: str) -> SourceRecord | None:
        row = (
            self.store.reader()
            .execute("SELECT name, spec, created_at, state FROM sources WHERE name = ?", (name,))
            .fetchone()
        )
        return _record(row) if row else None

    def insert(self, name: str, spec: dict[str, Any], state: dict[str, Any]) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM sources WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a source named {name!r} already exists")
            conn.execute(
                "INSERT INTO sources(name, spec, created_at, state) VALUES (?, ?, ?, ?)",
                (name, _dumps(spec), now, _dumps(state)),
            )
            _bump(conn)

        self.store.write(op)

    def upsert(self, name: str, spec: dict[str, Any], state: dict[str, Any]) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sources(name, spec, created_at, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, state = excluded.state",
                (name, _dumps(spec), now, _dumps(state)),
            )
            _bump(conn)

        self.store.write(op)

    def update_state(self, name: str, state: dict[str, Any]) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            changed = conn.execute("UPDATE sources SET state = ? WHERE name = ?", (_dumps(state), name)).rowcount
            if changed:
                _bump(conn)
            return bool(changed)

        return self.store.write(op)

    def delete(self, name: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute("DELETE FROM sources WHERE name = ?", (name,)).rowcount
            if deleted:
                _bump(conn)
            return bool(deleted)

        return self.store.write(op)

    def active_revisions(self, source: str) -> set[str]:
        """Revisions that unfinished runs of ``source`` (queued, running, awaiting approval) were planned with."""
        rows = (
            self.store.reader()
            .execute(
                f"SELECT DISTINCT revision FROM runs WHERE source = ? AND status IN ({UNFINISHED_SQL}) "
                "AND revision IS NOT NULL",
                (source,),
            )
            .fetchall()
        )
        return {r[0] for r in rows}
