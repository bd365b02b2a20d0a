"""Runs in the store: submit, claim, finish, cancel, list; idempotent submissions.

Claims run inside the writer's transaction (SQLite: ``BEGIN IMMEDIATE``), so
the count of running runs and the claim are atomic across processes:
``max_concurrent_runs`` is a property of the database, not of a process.
PostgreSQL overrides :meth:`RunRecords.claim` (its claims take their own lock,
see :mod:`.postgres`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from ..auth.scopes import Grant, grants_sql
from ..errors import IdempotencyMismatch, RunFinished, RunNotFound, Unavailable
from ..models import EventType, Run, RunStatus
from .chain import insert_events
from .deliveries import callback_views, insert_delivery
from .queries import (
    RUN_COLUMNS,
    RUN_WIDTH,
    ClaimedRun,
    dumps,
    insert_run_finished,
    new_run_id,
    run_from_row,
    scrub_plan,
)
from .queue import admit, pick, queue_entries, with_queue


def body_hash(body: Any) -> str:
    """What an ``Idempotency-Key`` is bound to: the request body, canonically."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")


def _scrubbed(plan_text: str) -> str:
    return dumps(scrub_plan(json.loads(plan_text)))


class RunRecords:
    """The runs and idempotency tables, part of every store."""

    _FOR_UPDATE = ""  # a row lock in request_cancel: SQLite's writer is alone and needs none

    def create_run(
        self,
        *,
        plan: dict[str, Any] | str,
        public: dict[str, Any],
        submitted_by: str,
        status: RunStatus = RunStatus.QUEUED,
        initial_events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
        idempotency: tuple[str, str, str] | None = None,
        affinity: str | None = None,
        max_queued: int | None = None,
        callback: str | None = None,
        concurrency: tuple[str, int, str] | None = None,
    ) -> tuple[Run, bool]:
        """Insert a run and its first events atomically; returns ``(run, replayed)``.

        ``idempotency`` is ``(subject, key, body_hash)``: the same key and body
        give back the first run, the same key with another body is refused.
        ``callback`` is a URL to POST the run to when it ends (store/deliveries.py).
        ``concurrency`` is ``(group, limit, when_busy)``: a busy group may reject the run
        or have its runs replaced, in this transaction (store/queue.py).
        """
        run_id = new_run_id()
        now = time.time()
        plan_text = plan if isinstance(plan, str) else dumps(plan)
        args_text = dumps(public["args"])
        event_rows = [(run_id, type_, now, dumps(data)) for type_, data in initial_events]
        finished = now if RunStatus(status).is_terminal else None
        created = Run(
            id=run_id,
            job=public["job"],
            source=public["source"],
            revision=public.get("revision"),
            args=public["args"],
            status=status,
            profile=public["profile"],
            submitted_by=submitted_by,
            created_at=now,
            finished_at=finished,
            reason=public.get("reason"),
            plan_digest=public.get("digest"),
        )

        def op(conn: Any) -> tuple[Run, bool]:
            if idempotency is not None:
                subject, key, body_hash = idempotency
                row = conn.execute(
                    "SELECT body_hash, run_id FROM idempotency WHERE subject = ? AND key = ?", (subject, key)
                ).fetchone()
                if row:
                    if row[0] != body_hash:
                        raise IdempotencyMismatch(
                            f"Idempotency-Key {key!r} was used with a different request body; use a new key",
                            [{"field": "Idempotency-Key", "message": "reused with a different body"}],
                        )
                    existing = self._get_run(conn, row[1])
                    if existing is not None:
                        return existing, True
            if max_queued is not None and status is RunStatus.QUEUED and self._queue_full(conn, max_queued):
                raise Unavailable(
                    f"{max_queued} runs are already queued (limits.max_queued_runs); retry later", retry_after=10
                )
            # A run that ends here (refused by policy or by its group) keeps no secret argument value.
            run, rows, stored_plan = created, event_rows, plan_text if finished is None else _scrubbed(plan_text)
            if concurrency is not None and status is RunStatus.QUEUED:
                refused = admit(conn, run_id, concurrency, submitted_by, now, self._FOR_UPDATE)
                if refused is not None:
                    run = Run(
                        **{**created.__dict__, "status": RunStatus.REJECTED, "finished_at": now, "reason": refused}
                    )
                    end = {"status": "rejected", "exit_code": None, "duration": 0.0, "reason": refused}
                    rows = [*event_rows, (run_id, EventType.RUN_FINISHED.value, now, dumps(end))]
                    stored_plan = _scrubbed(plan_text)
            conn.execute(
                "INSERT INTO runs(id, job, source, revision, args, status, profile, submitted_by, created_at, "
                "finished_at, reason, plan_digest, plan, affinity, concurrency_group, concurrency_limit) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    public["job"],
                    public["source"],
                    public.get("revision"),
                    args_text,
                    run.status.value,
                    public["profile"],
                    submitted_by,
                    now,
                    run.finished_at,
                    run.reason,
                    public.get("digest"),
                    stored_plan,
                    affinity,
                    concurrency[0] if concurrency else None,
                    concurrency[1] if concurrency else None,
                ),
            )
            insert_events(conn, rows)
            if idempotency is not None:
                subject, key, body_hash = idempotency
                conn.execute(
                    "INSERT INTO idempotency(subject, key, body_hash, run_id, created_at) VALUES (?, ?, ?, ?, ?)",
                    (subject, key, body_hash, run_id, now),
                )
            if callback is not None:
                view = insert_delivery(conn, run_id, callback, now, ended=run.finished_at is not None)
                return Run(**{**run.__dict__, "callback": view}), False
            return run, False

        return self.write(op)

    def _queue_full(self, conn: Any, limit: int) -> bool:
        """Whether ``limit`` runs are queued; counted at most twice a second (runs as the writer)."""
        now = time.monotonic()
        if now - self._queued_checked > 0.5 or self._queued_count >= limit - 1000:
            self._queued_count = conn.execute("SELECT count(*) FROM runs WHERE status = 'queued'").fetchone()[0]
            self._queued_checked = now
        else:
            self._queued_count += 1
        return self._queued_count >= limit

    @staticmethod
    def _get_run(conn: Any, run_id: str, suffix: str = "") -> Run | None:
        row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?{suffix}", (run_id,)).fetchone()
        if not row:
            return None
        return run_from_row(row, callback_views(conn, [run_id]).get(run_id))

    def get_run(self, run_id: str) -> Run:
        run = self._get_run(self.reader(), run_id) if "\x00" not in run_id else None  # PostgreSQL refuses NUL
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run

    def run_plan(self, run_id: str) -> dict[str, Any]:
        row = self.reader().execute("SELECT plan FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return json.loads(row[0])

    def list_runs(
        self,
        *,
        status: str | None = None,
        job: str | None = None,
        source: str | None = None,
        limit: int = 50,
        before: int | None = None,
        grants: frozenset[Grant] | None = None,
    ) -> tuple[list[Run], int | None]:
        """Newest first; ``before`` is the cursor from a previous page; ``grants`` (None: all) the jobs visible."""
        clauses, params = [], []
        if grants is not None:
            condition, values = grants_sql(grants)
            clauses.append(condition)
            params.extend(values)
        for column, value in (("status", status), ("job", job), ("source", source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = (
            self.reader()
            .execute(f"SELECT {RUN_COLUMNS}, seq FROM runs {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1))
            .fetchall()
        )
        more = len(rows) > limit
        rows = rows[:limit]
        callbacks = callback_views(self.reader(), [r[0] for r in rows])
        return [run_from_row(r, callbacks.get(r[0])) for r in rows], (rows[-1][RUN_WIDTH] if more else None)

    def queue_of(self, runs: list[Run], max_running: int) -> list[Run]:
        """The runs, each queued one with its place in line and why it waits (store/queue.py)."""
        return with_queue(runs, queue_entries(self.reader(), runs, max_running))

    def count_runs(self) -> dict[str, int]:
        return dict(self.reader().execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())

    def any_queued(self, owner: str, affinity_only: bool = False) -> bool:
        """Whether any run waits that ``owner`` could claim, its group aside: one statement (a hint, as below)."""
        affinity = "affinity = ?" if affinity_only else "(affinity IS NULL OR affinity = ?)"
        return bool(
            self.reader()
            .execute(f"SELECT 1 FROM runs WHERE status = 'queued' AND {affinity} LIMIT 1", (owner,))
            .fetchone()
        )

    def next_claimable(self, owner: str, max_running: int | None, affinity_only: bool = False) -> str | None:
        """The run a claim by ``owner`` would take first; None if there is none or ``max_running`` are running.

        A read, without the claim's lock or transaction: a hint for a process deciding whether a
        claim is worth a write (runs/runner.py), never the decision itself.  ``max_running`` None:
        whatever is running (a slot this process just freed may not be committed free yet).
        """
        conn = self.reader()
        if (
            max_running is not None
            and conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] >= max_running
        ):
            return None
        affinity = "affinity = ?" if affinity_only else "(affinity IS NULL OR affinity = ?)"
        ids = pick(conn, 1, affinity, owner)
        return ids[0] if ids else None

    def claim(self, owner: str, local_free: int, max_running: int, affinity_only: bool = False) -> list[ClaimedRun]:
        """Move the oldest queued runs to ``running`` for ``owner``, never above ``max_running`` in total
        nor above a concurrency group's limit (store/queue.py: a busy group is skipped, not waited on).

        Runs bound to an owner (a CLI's local runs) are claimed only by it;
        with ``affinity_only`` the owner claims nothing else.
        """
        affinity = "affinity = ?" if affinity_only else "(affinity IS NULL OR affinity = ?)"
        if local_free <= 0:
            return []

        def op(conn: Any) -> list[ClaimedRun]:
            running = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
            room = min(local_free, max_running - running)
            if room <= 0:
                return []
            ids = pick(conn, room, affinity, owner)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS}, plan FROM runs WHERE id IN ({marks}) ORDER BY seq", ids
            ).fetchall()
            now = time.time()
            claimed = []
            for row in rows:
                conn.execute(
                    "UPDATE runs SET status = 'running', owner = ?, started_at = ? WHERE id = ?", (owner, now, row[0])
                )
                run = run_from_row(row)
                run = Run(**{**run.__dict__, "status": RunStatus.RUNNING, "started_at": now})
                claimed.append(ClaimedRun(run, row[RUN_WIDTH]))
            return claimed

        return self.write(op)

    def release_claims(self, run_ids: list[str], owner: str) -> None:
        """Put claimed runs that never started back in the queue, in their old place."""
        if not run_ids:
            return
        marks = ",".join("?" * len(run_ids))
        self.write(
            lambda conn: conn.execute(
                f"UPDATE runs SET status = 'queued', owner = NULL, started_at = NULL WHERE owner = ? AND status = 'running' AND id IN ({marks})",
                (owner, *run_ids),
            )
        )

    def set_pgid(self, run_id: str, pgid: int | None) -> None:
        self.write_later(lambda conn: conn.execute("UPDATE runs SET pgid = ? WHERE id = ?", (pgid, run_id)))

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        outputs: dict[str, Any] | None = None,
        expect: tuple[str, ...] = ("running",),
        scrub: bool = True,
        wait: bool = True,
    ) -> bool | None:
        """End a run and write its terminal event in one transaction.

        Returns False (and writes nothing) if the run was no longer in one of
        ``expect`` - e.g. already marked ``lost`` by a sweeper.  ``scrub``
        rewrites the stored plan without secret argument values (callers that
        know the plan has none skip that work); with ``wait=False`` the end is
        queued behind the run's own events and the call returns at once.
        ``outputs`` (as shown: typed, secrets masked) are stored with the run and in its ``run.finished``.
        """
        now = time.time()

        def op(conn: Any) -> bool:
            row = conn.execute("SELECT status, started_at, created_at FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row[0] not in expect:
                return False
            started = row[1] or row[2]
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, exit_code = ?, reason = ?, pgid = NULL, outputs = ? "
                "WHERE id = ?",
                (status.value, now, exit_code, reason, dumps(outputs) if outputs else None, run_id),
            )
            payload = {"status": status.value, "exit_code": exit_code, "duration": round(now - started, 6)}
            if reason:
                payload["reason"] = reason
            payload.update(data or {})
            payload["outputs"] = outputs or {}
            insert_run_finished(conn, run_id, now, payload, scrub)
            return True

        if not wait:
            self.write_later(op)
            return None
        return self.write(op)

    def request_cancel(self, run_id: str, subject: str) -> Run:
        """Cancel a queued run (or one awaiting approval) now; ask the owner of a running run to stop it."""
        now = time.time()

        def op(conn: Any) -> Run:
            # PostgreSQL: lock the row, so a claim on another connection either skips it or has committed.
            run = self._get_run(conn, run_id, self._FOR_UPDATE)
            if run is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            if run.status in (RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL):
                reason = f"cancelled by {subject} before it started"
                conn.execute(
                    "UPDATE runs SET status = 'cancelled', finished_at = ?, reason = ? WHERE id = ?",
                    (now, reason, run_id),
                )
                insert_run_finished(
                    conn, run_id, now, {"status": "cancelled", "exit_code": None, "duration": 0.0, "reason": reason}
                )
            elif run.status is RunStatus.RUNNING:
                first = conn.execute(
                    "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND cancel_requested = 0", (run_id,)
                ).rowcount
                if first:
                    insert_events(conn, [(run_id, EventType.RUN_CANCEL_REQUESTED.value, now, dumps({"by": subject}))])
            else:
                raise RunFinished(f"run {run_id} already ended ({run.status.value})", run_status=run.status.value)
            updated = self._get_run(conn, run_id)
            assert updated is not None
            return updated

        return self.write(op)

    def cancel_requested(self, run_ids: list[str]) -> set[str]:
        if not run_ids:
            return set()
        marks = ",".join("?" * len(run_ids))
        rows = (
            self.reader()
            .execute(f"SELECT id FROM runs WHERE cancel_requested = 1 AND id IN ({marks})", run_ids)
            .fetchall()
        )
        return {r[0] for r in rows}
