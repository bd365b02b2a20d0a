"""Run callbacks in the store: one delivery per run that asked for one, durable across restarts.

A delivery is written with its run (``waiting``), becomes ``pending`` in the
transaction that ends the run (:func:`~.queries.insert_run_finished`, or at
once for a run rejected at submit), and ends ``delivered`` or ``failed``.

Claims go through the writer, like every write: on SQLite its transaction
holds the database's write lock (``BEGIN IMMEDIATE`` and the writers'
``flock``), on PostgreSQL the cluster-wide write advisory lock
(:mod:`.postgres`), so the select and the update of a claim are one atomic
step across processes and nodes.  A claim is a lease: the claimer owns the
attempt until ``lease_until``; a process that dies mid-attempt lets the lease
run out and another one tries again (delivery is at-least-once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..logs import redact
from ..models import EventType
from .chain import insert_events
from .queries import dumps, new_run_id

_VIEW_COLUMNS = "run_id, id, url, state, attempts, last_status"
_DUE = "state = 'pending' AND due_at <= ? AND (lease_until IS NULL OR lease_until < ?)"


@dataclass(frozen=True)
class Delivery:
    """A delivery this process has claimed: where to, under which id, and the attempt it is on."""

    run_id: str
    id: str
    url: str
    attempt: int


def shown_url(url: str) -> str:
    """The URL as runs, events and logs show it: a query string may carry a token, so it is redacted."""
    return redact(url)


def insert_delivery(conn: Any, run_id: str, url: str, now: float, ended: bool) -> dict[str, Any]:
    """Record a run's callback with the run (in its transaction); ``ended``: the run is already over."""
    delivery_id = new_run_id()
    state = "pending" if ended else "waiting"
    conn.execute(
        "INSERT INTO callback_deliveries(run_id, id, url, state, due_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (run_id, delivery_id, url, state, now if ended else None, now, now),
    )
    return _view((run_id, delivery_id, url, state, 0, None))


def _view(row: Any) -> dict[str, Any]:
    return {"url": shown_url(row[2]), "id": row[1], "state": row[3], "attempts": row[4], "last_status": row[5]}


def callback_views(conn: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The callbacks of these runs as a run shows them (one query), by run id."""
    if not run_ids:
        return {}
    marks = ",".join("?" * len(run_ids))
    rows = conn.execute(f"SELECT {_VIEW_COLUMNS} FROM callback_deliveries WHERE run_id IN ({marks})", run_ids)
    return {row[0]: _view(row) for row in rows.fetchall()}


class DeliveryRecords:
    """The ``callback_deliveries`` table, part of every store."""

    def claim_deliveries(
        self, owner: str, lease: float, *, run_ids: list[str] | None = None, limit: int = 4
    ) -> list[Delivery]:
        """Take up to ``limit`` due deliveries (of ``run_ids`` only, if given) for ``owner``, for ``lease`` seconds."""
        only = f" AND run_id IN ({','.join('?' * len(run_ids))})" if run_ids else ""

        def op(conn: Any) -> list[Delivery]:
            now = time.time()
            rows = conn.execute(
                f"SELECT run_id, id, url, attempts FROM callback_deliveries WHERE {_DUE}{only} ORDER BY due_at LIMIT ?",
                (now, now, *(run_ids or ()), limit),
            ).fetchall()
            claimed = []
            for run_id, delivery_id, url, attempts in rows:
                taken = conn.execute(
                    f"UPDATE callback_deliveries SET lease_owner = ?, lease_until = ? WHERE run_id = ? AND {_DUE}",
                    (owner, now + lease, run_id, now, now),
                ).rowcount
                if taken:
                    claimed.append(Delivery(run_id, delivery_id, url, attempts + 1))
            return claimed

        return self.write(op)  # type: ignore[attr-defined]

    def record_attempt(
        self,
        delivery: Delivery,
        owner: str,
        *,
        status: int | None,
        error: str | None,
        retry_at: float | None,
    ) -> None:
        """The attempt's outcome and its event, in one transaction; ``retry_at`` None: no retry (delivered or given up)."""
        delivered = status is not None and 200 <= status < 300
        state = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
        data: dict[str, Any] = {
            "delivery": delivery.id,
            "url": shown_url(delivery.url),
            "attempt": delivery.attempt,
            "status": status,
        }
        if not delivered:
            data["error"] = error or f"HTTP {status}"
            data["retry_in"] = None if retry_at is None else round(max(0.0, retry_at - time.time()), 3)
        kind = EventType.CALLBACK_DELIVERED if delivered else EventType.CALLBACK_FAILED

        def op(conn: Any) -> None:
            now = time.time()
            conn.execute(
                "UPDATE callback_deliveries SET state = ?, attempts = ?, due_at = ?, lease_owner = NULL, "
                "lease_until = NULL, last_status = ?, last_error = ?, updated_at = ? "
                "WHERE run_id = ? AND lease_owner = ?",
                (state, delivery.attempt, retry_at, status, data.get("error"), now, delivery.run_id, owner),
            )
            insert_events(conn, [(delivery.run_id, kind.value, now, dumps(data))])

        self.write(op)  # type: ignore[attr-defined]

    def next_delivery_at(self) -> float | None:
        """When the next pending delivery can be claimed (its due time, or its lease's end), if any."""
        row = (
            self.reader()  # type: ignore[attr-defined]
            .execute(
                "SELECT min(CASE WHEN lease_until IS NOT NULL AND lease_until > due_at THEN lease_until ELSE due_at END) "
                "FROM callback_deliveries WHERE state = 'pending'"
            )
            .fetchone()
        )
        return row[0] if row and row[0] is not None else None

    def deliveries_settled(self, run_ids: list[str]) -> bool:
        """Whether none of these runs' callbacks is still to be attempted now (waiting, or pending and due)."""
        if not run_ids:
            return True
        marks = ",".join("?" * len(run_ids))
        row = (
            self.reader()  # type: ignore[attr-defined]
            .execute(
                f"SELECT count(*) FROM callback_deliveries WHERE run_id IN ({marks}) "
                "AND (state = 'waiting' OR (state = 'pending' AND due_at <= ?))",
                (*run_ids, time.time()),
            )
            .fetchone()
        )
        return row[0] == 0
