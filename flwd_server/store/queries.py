"""SQL and row mappers both backends share (written in SQLite's spelling; see :mod:`.postgres_sql`)."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..models import UNFINISHED_STATUSES, EventType, Run, RunStatus
from .chain import insert_events

RUN_COLUMNS = (
    "id, job, source, revision, args, status, profile, submitted_by, created_at, "
    "started_at, finished_at, exit_code, reason, plan_digest, outputs"
)
RUN_WIDTH = RUN_COLUMNS.count(",") + 1  # a row's columns after RUN_COLUMNS start at this index
UNFINISHED_SQL = ", ".join(f"'{status}'" for status in UNFINISHED_STATUSES)  # ``status IN (...)`` of unfinished runs
# meta keys of open exports, each valued with the time (text) its hold on retention lapses (store/export.py)
EXPORT_HOLD = "export_hold:"
# An upsert both SQLite (3.24+) and PostgreSQL understand; INSERT OR REPLACE is SQLite's alone.
SET_META = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RUN_ID_RE = re.compile(f"[{_CROCKFORD}]{{26}}")  # what new_run_id makes


def new_run_id() -> str:
    """A 26-character, time-ordered, URL-safe id (ULID layout, lowercase)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def run_from_row(row: Any, callback: dict[str, Any] | None = None) -> Run:
    """A :class:`Run` from a row that starts with :data:`RUN_COLUMNS` (and its callback, if it has one)."""
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
        outputs=json.loads(row[14]) if row[14] else {},
        callback=callback,
    )


def dumps(data: Any) -> str:
    """Compact JSON as stored in the ``data``, ``args`` and ``plan`` columns."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def insert_run_finished(conn: Any, run_id: str, now: float, payload: dict[str, Any], scrub: bool = True) -> None:
    """``run.finished``, in the transaction that ends the run: a stream that sees it finds the final row.

    Its data always carries the run's ``outputs`` (empty for a run that set none). The run's
    callback, if it asked for one, falls due in the same transaction (store/deliveries.py).
    Every way a run ends comes here, so here its secret argument values leave the stored plan
    (``scrub=False``: the caller knows the plan has none).
    """
    if scrub:
        scrub_stored_plan(conn, run_id)
    payload.setdefault("outputs", {})
    insert_events(conn, [(run_id, EventType.RUN_FINISHED.value, now, dumps(payload))])
    conn.execute(
        "UPDATE callback_deliveries SET state = 'pending', due_at = ?, updated_at = ? "
        "WHERE run_id = ? AND state = 'waiting'",
        (now, now, run_id),
    )


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
        return parse_plan(self.plan_json)


_PLANS: dict[str, dict[str, Any]] = {}


def parse_plan(text: str) -> dict[str, Any]:
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


def scrub_stored_plan(conn: Any, run_id: str) -> None:
    """Rewrite a run's stored plan without its secret argument values (when it ends: nothing needs them)."""
    row = conn.execute("SELECT plan FROM runs WHERE id = ?", (run_id,)).fetchone()
    plan = json.loads(row[0]) if row else {}
    if plan.get("secret_args"):
        conn.execute("UPDATE runs SET plan = ? WHERE id = ?", (dumps(scrub_plan(plan)), run_id))


def scrub_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Drop secret argument values once a run has ended: nothing needs them any more."""
    secret = set(plan.get("secret_args") or [])
    if not secret:
        return plan
    args = {k: ("***" if k in secret else v) for k, v in (plan.get("args") or {}).items()}
    return {**plan, "args": args}
