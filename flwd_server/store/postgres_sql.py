"""SQLite's SQL on PostgreSQL: the translation, and a connection that speaks the store's SQL.

The store's SQL is written once, in SQLite's spelling.  :class:`PgConnection`
wraps a psycopg connection in the small part of the ``sqlite3`` interface the
store uses (``execute`` with ``?`` placeholders, ``executemany``,
``rowcount``, ``in_transaction``) and :func:`translate` turns each statement
text into PostgreSQL's, once (cached): ``?`` -> ``%s``, ``BEGIN IMMEDIATE`` ->
``BEGIN``, ``AUTOINCREMENT`` -> ``BIGSERIAL``, ``REAL`` -> ``DOUBLE PRECISION``,
``INDEXED BY`` and ``WITHOUT ROWID`` dropped.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import pq

from .chain import INSERT_HASHED

INSERT_EVENTS_UNNEST = (
    "INSERT INTO events(id, run_id, type, ts, data, hash) "
    "SELECT * FROM unnest(%s::int8[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[])"
)

_TRANSLATED: dict[str, str] = {}
_DDL_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", re.I), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
)
_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+", re.I)
_WITHOUT_ROWID = re.compile(r"\)\s*WITHOUT ROWID\s*$", re.I)


def translate(sql: str) -> str:
    """SQLite's spelling of a statement -> PostgreSQL's (cached per statement text)."""
    out = _TRANSLATED.get(sql)
    if out is not None:
        return out
    out = sql.replace("%", "%%").replace("?", "%s")
    out = out.replace("BEGIN IMMEDIATE", "BEGIN")
    out = _INDEXED_BY.sub("", out)
    if out.lstrip().upper().startswith("CREATE TABLE"):
        out = _WITHOUT_ROWID.sub(")", out.rstrip())
        for pattern, replacement in _DDL_TYPES:
            out = pattern.sub(replacement, out)
    if len(_TRANSLATED) > 2000:  # texts with a variable IN (...) list: keep the cache bounded
        _TRANSLATED.clear()
    _TRANSLATED[sql] = out
    return out


class Result:
    """The rows of one statement, fetched at once (the connection goes back to its pool)."""

    __slots__ = ("rows", "rowcount", "_next")

    def __init__(self, rows: list[tuple], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self._next = 0

    def fetchone(self) -> tuple | None:
        if self._next >= len(self.rows):
            return None
        self._next += 1
        return self.rows[self._next - 1]

    def fetchall(self) -> list[tuple]:
        rows = self.rows[self._next :]
        self._next = len(self.rows)
        return rows

    def __iter__(self) -> Any:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection (autocommit; transactions are explicit) that speaks the store's SQL."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.wrote_events = False
        self._cur = raw.cursor()  # one cursor, reused: a statement costs no new cursor object

    def execute(self, sql: str, params: Any = ()) -> Result:
        if sql.startswith("INSERT INTO events"):
            self.wrote_events = True
        cur = self._cur
        cur.execute(translate(sql), tuple(params))
        rows = cur.fetchall() if cur.description is not None else []
        return Result(rows, cur.rowcount)

    def executemany(self, sql: str, seq: Any) -> Result:
        rows = list(seq)
        if not rows:
            return Result([], 0)
        if len(rows) == 1:
            return self.execute(sql, rows[0])
        if sql == INSERT_HASHED:
            # A batch of events is one statement with six arrays, not one per row (psycopg's
            # executemany pipelines, but still spends Python time per row); the ids are the chain's.
            self.wrote_events = True
            self._cur.execute(INSERT_EVENTS_UNNEST, [list(column) for column in zip(*rows, strict=True)])
            return Result([], len(rows))
        if sql.startswith("INSERT INTO events"):
            self.wrote_events = True
        with self.raw.cursor() as cur:
            cur.executemany(translate(sql), rows)
            return Result([], cur.rowcount)

    def run(self, script: str) -> None:
        """Fixed statements without parameters, several in one round trip."""
        self.raw.execute(script.encode(), prepare=False)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def close(self) -> None:
        self.raw.close()
