"""Runs awaiting approval in the store: an approval, a release to the queue, a denial, an expiry.

Each is one transaction that first locks the run's row (PostgreSQL: ``FOR UPDATE``;
SQLite's writer is alone), so approvals and denials racing on several workers or
nodes leave exactly one outcome. Approvals are the run's ``run.approved`` events:
they are counted under that lock, and a run awaiting approval is never pruned.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import AlreadyApproved, ApprovalMismatch, NotAwaitingApproval, RunNotFound
from ..models import EventType, Run, RunStatus
from .chain import insert_events
from .queries import dumps, insert_run_finished
from .queue import admit

AWAITING = RunStatus.AWAITING_APPROVAL.value


class ApprovalRecords:
    """Part of every store (see :class:`~.run_records.RunRecords` for ``_get_run`` and ``_FOR_UPDATE``)."""

    def _awaiting(self, conn: Any, run_id: str) -> Run:
        run = self._get_run(conn, run_id, self._FOR_UPDATE)  # type: ignore[attr-defined]
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        if run.status is not RunStatus.AWAITING_APPROVAL:
            raise NotAwaitingApproval(
                f"run {run_id} is {run.status.value}, not awaiting approval", run_status=run.status.value
            )
        return run

    def approve_run(
        self,
        run_id: str,
        subject: str,
        digest: str,
        required: int,
        changed: str | None,
        affinity: str | None,
        when_busy: str = "queue",
    ) -> tuple[Run, int]:
        """Record ``subject``'s approval of ``digest``; returns the run after it and the approvals counted.

        The ``required``-th approval releases the run: to the queue (for ``affinity``, or any
        process), or, when ``changed`` says how its source moved since it was planned, to its
        end ``rejected``.  A run entering the queue meets its concurrency group's ``when_busy``
        then, as a run submitted at that moment would: ``reject`` ends it, ``replace`` stops the others.
        """
        now = time.time()

        def op(conn: Any) -> tuple[Run, int]:
            run = self._awaiting(conn, run_id)
            if digest != run.plan_digest:
                raise ApprovalMismatch(
                    f"approval of {digest} but run {run_id} would run plan {run.plan_digest}: "
                    "approve the digest of the run (GET /runs/ID, plan_digest)",
                    approved=digest,
                    plan_digest=run.plan_digest,
                )
            approvers = [
                json.loads(row[0]).get("by")
                for row in conn.execute(
                    "SELECT data FROM events WHERE run_id = ? AND type = ?", (run_id, EventType.RUN_APPROVED.value)
                )
            ]
            if subject in approvers:
                raise AlreadyApproved(
                    f"{subject} already approved run {run_id}; it needs {required} distinct approvers",
                    approvers=approvers,
                )
            count = len(approvers) + 1
            data = {"by": subject, "digest": digest, "approvals": count, "required": required}
            insert_events(conn, [(run_id, EventType.RUN_APPROVED.value, now, dumps(data))])
            refused = None
            if count >= required and changed is None and when_busy != "queue":
                refused = self._admit_released(conn, run_id, when_busy, subject, now)
            if refused is not None:
                self._end_awaiting(conn, run_id, now, refused, {})
            elif count >= required:
                if changed is None:
                    conn.execute(
                        "UPDATE runs SET status = 'queued', affinity = ? WHERE id = ? AND status = ?",
                        (affinity, run_id, AWAITING),
                    )
                else:
                    self._end_awaiting(conn, run_id, now, f"changed since approval: {changed}", {})
            updated = self._get_run(conn, run_id)  # type: ignore[attr-defined]
            return updated, count

        return self.write(op)  # type: ignore[attr-defined]

    def _admit_released(self, conn: Any, run_id: str, when_busy: str, subject: str, now: float) -> str | None:
        row = conn.execute("SELECT concurrency_group, concurrency_limit FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return admit(conn, run_id, (row[0], row[1], when_busy), subject, now, self._FOR_UPDATE)  # type: ignore[attr-defined]

    def deny_run(self, run_id: str, subject: str, reason: str) -> Run:
        """End a run awaiting approval ``rejected`` with ``reason``; its ``run.finished`` names who denied it."""
        now = time.time()

        def op(conn: Any) -> Run:
            self._awaiting(conn, run_id)
            self._end_awaiting(conn, run_id, now, reason, {"denied_by": subject})
            return self._get_run(conn, run_id)  # type: ignore[attr-defined]

        return self.write(op)  # type: ignore[attr-defined]

    def expire_approvals(self, timeout: float) -> list[str]:
        """End ``rejected`` every run that awaited approval longer than ``timeout`` seconds; returns their ids.

        Every process's sweeper calls this; the conditional UPDATE makes exactly one of them end each run.
        """
        now = time.time()
        reason = f"no approval within {timeout:g}s (policy.approval_timeout)"

        def op(conn: Any) -> list[str]:
            # The partial index named (PostgreSQL's translation drops the hint; its planner picks it): SQLite, without
            # statistics, takes runs_status_seq and reads every waiting run, 2.1 ms of CPU a sweep instead of 0.13 ms
            # with 1,000 waiting among 100,000 runs.
            rows = conn.execute(
                "SELECT id FROM runs INDEXED BY runs_awaiting_approval WHERE status = 'awaiting_approval' AND created_at < ?",
                (now - timeout,),
            ).fetchall()
            return [row[0] for row in rows if self._end_awaiting(conn, row[0], now, reason, {})]

        return self.write(op)  # type: ignore[attr-defined]

    @staticmethod
    def _end_awaiting(conn: Any, run_id: str, now: float, reason: str, data: dict[str, Any]) -> bool:
        """``rejected`` with ``reason``, if it still awaits approval; its secret argument values go."""
        ended = conn.execute(
            "UPDATE runs SET status = 'rejected', finished_at = ?, reason = ? WHERE id = ? AND status = ?",
            (now, reason, run_id, AWAITING),
        ).rowcount
        if ended:
            payload = {"status": "rejected", "exit_code": None, "duration": 0.0, "reason": reason, **data}
            insert_run_finished(conn, run_id, now, payload)
        return bool(ended)
