"""Submission: a plan checked and stored as a run (queued, or rejected by policy), with its first events.

The engine delegates :meth:`Engine.submit` here, so the facade stays a facade; what a
submission needs of the process (is it closing, waking its runner) comes in as callables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..auth.scopes import Scope
from ..config import Settings
from ..errors import PlanChanged, PolicyDenied, Unavailable
from ..models import Decision, EventType, Plan, Principal, Run, RunStatus, Verdict
from ..planner import Planner, PlanRequest, plan_record
from ..policy import log_decision
from ..store import Store
from .callbacks import CallbackPolicy
from .delivery import CallbackDeliverer
from .runner import Runner

log = logging.getLogger("flwd.engine")


class Submitter:
    """Turns a :class:`PlanRequest` into a stored run; one per engine."""

    def __init__(
        self,
        store: Store,
        planner: Planner,
        runner: Runner,
        settings: Settings,
        callback_policy: CallbackPolicy,
        callbacks: CallbackDeliverer,
        *,
        local_affinity: bool,
        closing: Callable[[], bool],
        start: Callable[[], None],
    ) -> None:
        self.store = store
        self.planner = planner
        self.runner = runner
        self.settings = settings
        self.callback_policy = callback_policy
        self.callbacks = callbacks
        self.local_affinity = local_affinity
        self._closing = closing
        self._start = start

    def submit(
        self,
        request: PlanRequest,
        principal: Principal,
        idempotency: tuple[str, str] | None = None,
        *,
        runner: str | None = None,
    ) -> tuple[Run, bool]:
        """Queue a run (or record it rejected); returns ``(run, replayed)`` (see :meth:`Engine.submit`)."""
        if self._closing() or self.runner.draining:
            raise Unavailable("the server is shutting down and takes no new runs", retry_after=30)
        callback = self.callback_policy.check(request.callback) if request.callback is not None else None
        plan = self.planner.plan(request, principal)
        principal.require(Scope.RUNS_WRITE, plan.job.source, plan.job.name)
        if request.plan is not None and request.plan != plan.digest:
            raise PlanChanged(
                "the job, its arguments or its source changed since it was planned; plan again and submit the new digest",
                planned=request.plan,
                current=plan.digest,
            )
        downgrade = next((d for d in plan.decisions if d.check == "profile-downgrade"), None)
        if downgrade is not None:
            self._record_downgrade(downgrade, principal, plan)
            if downgrade.verdict is Verdict.DENY:
                raise PolicyDenied(downgrade.reason, check="profile-downgrade")
        public = {
            "job": plan.job.name,
            "source": plan.job.source,
            "revision": plan.job.revision,
            "args": plan.public_args(),
            "profile": plan.profile.value,
        }
        queued = {**public, "submitted_by": principal.subject}  # run.queued: the run as submitted
        public["digest"] = plan.digest
        record = plan_record(plan)
        events: list[tuple[str, dict[str, Any]]] = [(EventType.RUN_QUEUED.value, queued)]
        if downgrade is not None:
            events.append((EventType.POLICY_PROFILE_DOWNGRADE.value, self.downgrade_data(downgrade, principal, plan)))
        status = RunStatus.QUEUED
        if plan.runnable and plan.job.approvals:  # runs/approvals.py: it waits for its approvers, unclaimed
            status = RunStatus.AWAITING_APPROVAL
            events.append(
                (
                    EventType.RUN_APPROVAL_REQUESTED.value,
                    {"required": plan.job.approvals, "digest": plan.digest, "submitted_by": principal.subject},
                )
            )
        if not plan.runnable:
            status = RunStatus.REJECTED
            public["reason"] = "denied by policy: " + "; ".join(f"{d.check}: {d.reason}" for d in plan.denials)
            events.extend((EventType.POLICY_DECISION.value, d.to_dict()) for d in plan.decisions)
            events.append(
                (
                    EventType.RUN_FINISHED.value,
                    {"status": "rejected", "exit_code": None, "duration": 0.0, "reason": public["reason"]},
                )
            )
        idem = (principal.subject, idempotency[0], idempotency[1]) if idempotency else None
        run, replayed = self.store.create_run(
            plan=record,
            public=public,
            submitted_by=principal.subject,
            status=status,
            initial_events=events,
            idempotency=idem,
            affinity=runner or (self.runner.owner if self.local_affinity else None),
            max_queued=self.settings.limits.max_queued_runs,
            callback=callback,
            concurrency=plan.group_spec(),
        )
        if callback is not None and self.local_affinity and runner is None:
            self.callbacks.adopt(run.id)  # a local run: the process that runs it delivers (flwd_cli/detached.py too)
        if not replayed:
            if status is RunStatus.REJECTED:
                for decision in plan.decisions:
                    log_decision(run.id, decision, job=plan.job.qualified_name)
            log.debug(
                "run %s queued: %s by %s",
                run.id,
                plan.job.qualified_name,
                principal.subject,
                extra={
                    "event": "run.queued",
                    "run_id": run.id,
                    "job": plan.job.qualified_name,
                    "subject": principal.subject,
                },
            )
            if runner is None:
                self._start()
                self.runner.wake()
        return run, replayed

    def downgrade_data(self, decision: Decision, principal: Principal, plan: Plan) -> dict[str, Any]:
        return {
            "subject": principal.subject,
            "from": self.planner.default_profile.value,
            "to": plan.requested_profile.value if plan.requested_profile else None,
            "granted": decision.verdict is not Verdict.DENY,
            "reason": decision.reason,
            "job": plan.job.qualified_name,
            "source": plan.job.source,  # a refused one has no run: GET /events?source= finds it by this
        }

    def _record_downgrade(self, decision: Decision, principal: Principal, plan: Plan) -> None:
        """Log every downgrade; a refused one has no run, so its event is a global one."""
        data = self.downgrade_data(decision, principal, plan)
        log.warning(
            "profile downgrade %s: %s",
            "granted" if data["granted"] else "refused",
            decision.reason,
            extra={"event": "policy.profile_downgrade", **data},
        )
        if not data["granted"]:
            self.store.emit(None, EventType.POLICY_PROFILE_DOWNGRADE.value, data)
            self.store.flush()
