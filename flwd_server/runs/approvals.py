"""Approvals bound to the plan: a run of a job with ``approval: {required: N}`` waits for N others.

An approver approves a digest, the run's plan digest, so what they saw is exactly what will
run. The last approval plans the job again against its source as it is then: if that gives
another digest (a new commit on a git ref, a local edit, the job gone), the run ends
``rejected`` ("changed since approval") instead of running something nobody approved.
Denials end it ``rejected`` with the denier's reason; ``policy.approval_timeout`` ends the
forgotten ones (the runner's sweeper, :meth:`Store.expire_approvals`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..auth.scopes import Scope
from ..catalog import Catalog
from ..errors import NotFound, SelfApproval
from ..models import Principal, Profile, Run, RunStatus
from ..planner import Planner
from ..store import Store
from .runner import Runner

log = logging.getLogger("flwd.engine")


def required_approvals(plan: dict) -> int:
    """The approvers a stored plan waits for (its job's ``approval.required``; 0: none)."""
    return int((plan.get("job", {}).get("approval") or {}).get("required", 0))


class Approvals:
    """Approve and deny runs awaiting approval; one per engine."""

    def __init__(
        self,
        store: Store,
        planner: Planner,
        catalog: Catalog,
        runner: Runner,
        *,
        local_affinity: bool,
        start: Callable[[], None],
    ) -> None:
        self.store = store
        self.planner = planner
        self.catalog = catalog
        self.runner = runner
        self.local_affinity = local_affinity
        self._start = start

    def _checked(self, run_id: str, principal: Principal) -> Run:
        run = self.store.get_run(run_id)
        principal.require(Scope.RUNS_APPROVE, run.source, run.job)
        return run

    def approve(self, run_id: str, principal: Principal, digest: str) -> Run:
        """Count ``principal``'s approval of ``digest``; the last one releases the run (or rejects it, changed)."""
        run = self._checked(run_id, principal)
        if run.submitted_by == principal.subject:
            raise SelfApproval(
                f"{principal.subject} submitted run {run_id} and cannot approve it: another approver must",
                submitted_by=run.submitted_by,
            )
        plan = self.store.run_plan(run_id)
        changed = self.changed(run, plan) if run.status is RunStatus.AWAITING_APPROVAL else None
        affinity = self.runner.owner if self.local_affinity else None  # a local approval runs it here
        when_busy = (plan["job"].get("concurrency") or {}).get("when_busy", "queue")
        updated, count = self.store.approve_run(
            run_id, principal.subject, digest, required_approvals(plan), changed, affinity, when_busy
        )
        log.info(
            "run %s approved by %s (%d of %d)",
            run_id,
            principal.subject,
            count,
            required_approvals(plan),
            extra={"event": "run.approved", "run_id": run_id, "subject": principal.subject},
        )
        if updated.status is RunStatus.QUEUED:
            self._start()
            self.runner.wake()
        return updated

    def deny(self, run_id: str, principal: Principal, reason: str) -> Run:
        """End a run awaiting approval ``rejected`` with ``reason`` (the submitter may withdraw their own)."""
        self._checked(run_id, principal)
        run = self.store.deny_run(run_id, principal.subject, reason)
        log.info(
            "run %s denied by %s",
            run_id,
            principal.subject,
            extra={"event": "run.denied", "run_id": run_id, "subject": principal.subject},
        )
        return run

    def changed(self, run: Run, plan: dict) -> str | None:
        """How the job moved since ``run`` was planned (its digest planned again differs), or None."""
        try:
            job = self.catalog.resolve(run.job, run.source)
        except NotFound:
            return f"job {run.source}:{run.job} is no longer in its source"
        if self.planner.digest(job, plan["args"], Profile(plan["profile"])) == run.plan_digest:
            return None
        if job.revision != run.revision:
            return f"source {run.source} moved from revision {run.revision} to {job.revision}"
        return f"the job file of {run.source}:{run.job} changed"
