"""The pool that executes runs: claims from the store, runs steps, reports through events.

One :class:`Runner` per process.  Its thread pool and dispatcher thread are
created on first use *in the process that uses them* (never before a fork).
The database claim, not the pool size, enforces ``max_concurrent_runs``
across every process; the pool is sized to the same number so a single
process can use the whole allowance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from json.encoder import encode_basestring as encode_json_string  # the C encoder, as json.dumps(ensure_ascii=False)
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import FlwdError, RunNotFound, StorageError, Unavailable
from ..events.hub import EventHub
from ..forksafe import reset_after_fork
from ..models import Decision, Event, EventType, Job, Profile, Run, RunStatus, Step, Verdict
from ..planner import Planner, job_from_record
from ..policy import evaluate, log_decision
from ..store import Store
from ..store.owners import HOSTNAME, owner_id, recover_lost_runs
from ..store.queries import ClaimedRun
from .capture import OutputBudget, SecretMask, StepOutput, secret_mask
from .cgroups import Caps, CgroupLayout, GroupPool, RunGroup, base_name, cap_reason, sweep_leftovers
from .environment import host_environment, host_limits, make_workdir, remove_workdir
from .host_executor import HostStep, StepOutcome, run_host_step
from .reaper import RunReaper, Subreaper

log = logging.getLogger("flwd.runner")

OUTPUT = EventType.STEP_OUTPUT.value
HEARTBEAT_EVERY = 2.0
SWEEP_EVERY = 3.0
HOUSEKEEP_EVERY = 10.0


@dataclass
class _Active:
    run: Run
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None
    status: str = "cancelled"
    source_dir: str | None = None


class Runner:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        planner: Planner,
        settings: Settings,
        *,
        affinity_only: bool = False,
        container_executor: Callable[..., StepOutcome] | None = None,
        cgroups: CgroupLayout | None = None,
    ) -> None:
        self.cgroups = cgroups if cgroups is not None and cgroups.usable else None
        self.cgroup_base = base_name(store.label)
        self.store = store
        self.hub = hub
        self.planner = planner
        self.settings = settings
        self.affinity_only = affinity_only
        self.container_executor = container_executor
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._reset()
        hub.add_listener(self._on_events)
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self.owner = owner_id()
        self._pool: ThreadPoolExecutor | None = None
        self._dispatcher: threading.Thread | None = None
        self._wakeup = threading.Event()
        self._active: dict[str, _Active] = {}
        self._futures: set[Future] = set()
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._draining = False
        self._stopped = False
        self.reaper: Subreaper | None = None  # this process's, where no cgroup can be made (start())
        self.groups: GroupPool | None = None  # this process's run cgroups (start())

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the pool and dispatcher in this process (again after a fork)."""
        if self.started:
            return
        with self._lock:
            if self._dispatcher is not None and self._dispatcher.is_alive():
                return
            self.hub.start()
            try:
                self.store.register_owner(self.owner, HOSTNAME, os.getpid())
            except StorageError as exc:  # e.g. a disk gone read-only: the heartbeat registers us once it can
                log.error("could not register this process as a run owner: %s; the heartbeat retries", exc.detail)
            if self.reaper is None:  # also with cgroups: it reaps the zombies of killed steps
                self.reaper = Subreaper()
            if self.cgroups is not None and self.groups is None:
                self.groups = GroupPool(self.cgroups, self.cgroup_base, self.reaper)
            self._sweep_leftovers()
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.limits.max_concurrent_runs, thread_name_prefix="flwd-run"
            )
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="flwd-dispatcher", daemon=True)
            self._dispatcher.start()

    @property
    def started(self) -> bool:
        return self._dispatcher is not None and self._dispatcher.is_alive()

    @property
    def draining(self) -> bool:
        return self._draining

    def wake(self) -> None:
        self._wakeup.set()

    def active_count(self) -> int:
        return len(self._active)

    def stop_claiming(self) -> None:
        """Claim no more queued runs (they stay queued for another process or the next start)."""
        self._draining = True

    def shutdown(
        self, grace: float | None = None, reason: str = "the server is shutting down", deadline: float | None = None
    ) -> None:
        """Stop claiming; give running runs ``grace`` seconds (or until the monotonic ``deadline``), then cancel them with ``reason``."""
        if not self.started:
            return
        grace = self.settings.shutdown_grace if grace is None else grace
        self._draining = True
        deadline = time.monotonic() + grace if deadline is None else deadline
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        for active in list(self._active.values()):
            if not active.cancel.is_set():  # a run already stopped (cancelled, abandoned) keeps its reason
                active.reason = f"{reason}; it did not finish within the {grace:g}s grace period (shutdown_grace)"
                active.cancel.set()
        stop_deadline = time.monotonic() + 15
        while self._active and time.monotonic() < stop_deadline:
            time.sleep(0.05)
        with self._claim_lock:  # no claim is half done when the pool goes
            self._stopped = True
        self._wakeup.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.groups is not None:
            self.groups.close()
        if self.reaper is not None:
            self.reaper.close()
        self.groups = self.reaper = None  # a later start() makes new ones
        with contextlib.suppress(Exception):
            self.store.unregister_owner(self.owner)

    def abandon(self, reason: str) -> None:
        """Stop every running run now; each ends ``lost`` with ``reason``, as if the process had died."""
        self._draining = True
        for active in list(self._active.values()):
            active.status, active.reason = RunStatus.LOST.value, reason
            active.cancel.set()

    # -- dispatch --------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.type in (EventType.RUN_QUEUED.value, EventType.RUN_FINISHED.value):
                self._wakeup.set()
            elif event.type == EventType.RUN_CANCEL_REQUESTED.value and event.run_id in self._active:
                active = self._active[event.run_id]
                active.reason = f"cancelled by {event.data.get('by', 'a client')}"
                active.cancel.set()

    def _dispatch_loop(self) -> None:
        next_beat = next_sweep = 0.0
        next_housekeeping = time.monotonic() + HOUSEKEEP_EVERY
        while not self._stopped:
            self._wakeup.wait(timeout=1.0)
            self._wakeup.clear()
            now = time.monotonic()
            try:
                if now >= next_beat:
                    if not self.store.heartbeat(self.owner) and not self._stopped:  # stopping: we removed it
                        self._declared_dead()
                    next_beat = now + HEARTBEAT_EVERY
                if now >= next_sweep:
                    if recover_lost_runs(self.store, me=self.owner, timeout=self.settings.liveness_timeout):
                        self._sweep_leftovers()
                    if self.reaper is not None:
                        self.reaper.reap()
                    self._check_cancellations()
                    next_sweep = now + SWEEP_EVERY
                if now >= next_housekeeping:
                    self.housekeeping()
                    next_housekeeping = now + HOUSEKEEP_EVERY
                if not self._draining:
                    self._claim()
            except StorageError as exc:  # a full or read-only disk: expected, said in one line
                log.error("dispatcher: %s; retrying", exc.detail)
                time.sleep(0.5)
            except Unavailable:  # the store closed under a last iteration: the process is stopping
                if self._stopped:
                    return
                time.sleep(0.5)
            except Exception:  # the dispatcher must survive a bad moment
                log.exception("dispatcher iteration failed; retrying")
                time.sleep(0.5)

    def _declared_dead(self) -> None:
        """Our owner row is gone: another process saw no heartbeat for ``liveness_timeout``.

        Our runs already ended ``lost`` there and their slots went to other
        runs; they are not resurrected (their end is not recorded again, the
        run rows say ``lost``).  Stop them, then come back as a new owner.
        """
        log.error(
            "this process was declared dead (no heartbeat for %gs, liveness_timeout); its %d running runs ended lost and are stopped",
            self.settings.liveness_timeout,
            len(self._active),
        )
        for active in list(self._active.values()):
            active.reason = "this flwd process was declared dead (no heartbeat within liveness_timeout)"
            active.cancel.set()
        old = self.owner
        self.owner = f"{owner_id()}:{os.urandom(3).hex()}"
        self.store.register_owner(self.owner, HOSTNAME, os.getpid())
        log.warning("re-registered as %s (was %s)", self.owner, old)

    def _sweep_leftovers(self) -> None:
        """Kill what is left of runs that no longer run (a killed server's, once its runs are lost)."""
        if self.cgroups is not None:
            sweep_leftovers(self.cgroups, self.cgroup_base)
        elif self.reaper is not None:
            self.reaper.kill_leftovers(self._run_is_over)

    def _run_is_over(self, run_id: str) -> bool:
        try:
            run = self.store.get_run(run_id)
        except RunNotFound:  # another database's run (another server on this host): not ours to touch
            return False
        return run_id not in self._active and run.status.is_terminal

    def housekeeping(self) -> None:
        self.store.prune(self.settings.limits.max_run_history)
        self.store.expire_idempotency(24 * 3600)
        self.store.checkpoint()

    def _check_cancellations(self) -> None:
        """Catch a cancel whose event this process missed (e.g. it was just starting)."""
        for run_id in self.store.cancel_requested(list(self._active)):
            active = self._active.get(run_id)
            if active and not active.cancel.is_set():
                active.reason = active.reason or "cancelled by a client"
                active.cancel.set()

    def _claim(self) -> None:
        with self._claim_lock:
            free = self.settings.limits.max_concurrent_runs - len(self._active)
            if free <= 0 or self._draining or self._stopped:
                return
            claimed = self.store.claim(self.owner, free, self.settings.limits.max_concurrent_runs, self.affinity_only)
            for index, item in enumerate(claimed):
                active = _Active(item.run)
                self._active[item.run.id] = active
                assert self._pool is not None
                try:
                    future = self._pool.submit(self._execute, item, active)
                except RuntimeError:  # the interpreter is exiting: give the runs back, never strand them
                    rest = [c.run.id for c in claimed[index:]]
                    for run_id in rest:
                        self._active.pop(run_id, None)
                    self.store.release_claims(rest, self.owner)
                    return
                self._futures.add(future)
                future.add_done_callback(self._futures.discard)

    # -- execution -------------------------------------------------------------

    def _decide(self, run_id: str, decisions: tuple[Decision, ...] | list[Decision]) -> None:
        for decision in decisions:
            self.store.emit(run_id, EventType.POLICY_DECISION.value, decision.to_dict())
            log_decision(run_id, decision)

    def _execute(self, claimed: ClaimedRun, active: _Active) -> None:
        run = claimed.run
        status, exit_code, reason = RunStatus.FAILED, None, None
        workdir: Path | None = None
        containment: RunGroup | RunReaper | None = None
        scrub = True
        try:
            record = claimed.plan
            scrub = bool(record.get("secret_args"))
            job = self._job_of(claimed.plan_json, record)
            active.source_dir = self._source_dir(job)
            args = record["args"]
            profile = Profile(record["profile"])
            decisions = evaluate(self.planner.context(job, profile))
            self._decide(run.id, decisions)
            denied = [d for d in decisions if d.verdict is Verdict.DENY]
            if denied:
                status = RunStatus.REJECTED
                reason = "denied by policy: " + "; ".join(f"{d.check}: {d.reason}" for d in denied)
                return
            self.store.emit(
                run.id,
                EventType.RUN_STARTED.value,
                {"owner": self.owner, "profile": profile.value, "submitted_by": run.submitted_by},
            )
            workdir = make_workdir(self.settings.resolved_data_dir / "work", run.id)
            deadline = time.time() + job.timeout
            budget = OutputBudget(self.settings.limits.max_output_bytes)
            secrets = self._secret_mask(run.id, record.get("secret_args") or (), args)
            containment = self._contain(run.id, profile)
            status = RunStatus.SUCCEEDED
            for index, step in enumerate(job.steps):
                outcome = self._run_step(
                    run, job, step, index, args, profile, workdir, deadline, active, budget, secrets, containment
                )
                exit_code = outcome.exit_code
                if outcome.status != "succeeded":
                    status = RunStatus(outcome.status)
                    if status is RunStatus.CANCELLED:
                        status, reason = RunStatus(active.status), active.reason or "cancelled"
                    elif status is RunStatus.TIMED_OUT:
                        reason = f"the job's timeout of {job.timeout:g}s was reached"
                    else:
                        reason = outcome.reason or f"step {step.name!r} exited with {outcome.exit_code}"
                    cap = containment.cap_reached() if containment is not None else None
                    if cap:
                        reason += f": {cap_reason(cap, self.settings.policy)}"
                    break
        except FlwdError as exc:  # an expected fault (e.g. the data dir is read-only): one line, its reason
            log.error("run %s failed: %s", run.id, exc.detail, extra={"run_id": run.id})
            status, reason = RunStatus.FAILED, exc.detail
        except Exception as exc:
            log.exception("run %s failed inside flwd", run.id)
            status, reason = RunStatus.FAILED, f"flwd could not execute the run: {type(exc).__name__}"
        finally:
            if isinstance(containment, RunGroup) and self.groups is not None:
                self.groups.release(containment)  # kills whatever a step left running, wherever it went
            elif containment is not None:
                containment.remove()
            if workdir is not None:
                remove_workdir(workdir)
            try:
                # Queued behind the run's own events; the next claim is queued behind it.
                self.store.finish_run(run.id, status, exit_code=exit_code, reason=reason, scrub=scrub, wait=False)
            except Exception:
                log.exception("could not record the end of run %s", run.id)
            self._active.pop(run.id, None)
            self._wakeup.set()

    def _contain(self, run_id: str, profile: Profile) -> RunGroup | RunReaper | None:
        """The run's cgroups, or, where there are none, its share of this process's subreaper."""
        if self.groups is not None:
            group = self.groups.acquire(run_id, Caps.of(profile, self.settings.policy))
            if group is not None:
                return group
        if self.reaper is not None and self.reaper.enabled:
            return RunReaper(self.reaper, run_id)
        return None

    def _secret_mask(self, run_id: str, names: Iterable[str], args: dict[str, Any]) -> SecretMask:
        """What to hide in the run's output; a value too short to hide is a warning, not a surprise."""
        mask, warning = secret_mask({name: args.get(name) for name in names})
        if warning is not None:
            self._decide(run_id, [warning])
        return mask

    def _job_of(self, plan_json: str, record: dict[str, Any]) -> Job:
        """The job of a stored plan; runs of the same plan share one parsed Job."""
        job = self._jobs.get(plan_json)
        if job is None:
            if len(self._jobs) >= 256:
                self._jobs.clear()
            job = self._jobs[plan_json] = job_from_record(record)
        return job

    def _source_dir(self, job: Job) -> str | None:
        """The source's files at the revision the run was planned with (FLWD_SOURCE_DIR)."""
        try:
            return self.planner.catalog.get(job.source).checkout_for(job.revision)
        except StorageError:  # the files could not be written here: the run fails saying where
            raise
        except Exception:  # a source removed since planning: the run goes on without it
            log.warning("run of %s: no files of source %s at %s", job.name, job.source, job.revision)
            return None

    def _run_step(
        self,
        run: Run,
        job: Job,
        step: Step,
        index: int,
        args: dict[str, Any],
        profile: Profile,
        workdir: Path,
        deadline: float,
        active: _Active,
        budget: OutputBudget,
        secrets: SecretMask,
        containment: RunGroup | RunReaper | None,
    ) -> StepOutcome:
        self.store.emit(run.id, EventType.STEP_STARTED.value, {"step": step.name, "index": index, "kind": step.kind})
        step_deadline = min(deadline, time.time() + step.timeout) if step.timeout else deadline
        step_json = encode_json_string(step.name)

        def emit_many(stream: str, lines: list[tuple[str, bool]]) -> None:
            """A chunk's lines as events in one go; their JSON is assembled, not dumped per line."""
            head = f'{{"step":{step_json},"stream":"{stream}","line":'
            now = time.time()
            rows = [
                (run.id, OUTPUT, now, head + encode_json_string(line) + (',"truncated":true}' if truncated else "}"))
                for line, truncated in lines
            ]
            self.store.emit_rows(rows)

        output = StepOutput(emit_many, budget, self.settings.limits.max_line_bytes, secrets)

        def should_stop() -> str | None:
            return "cancelled" if active.cancel.is_set() else None

        if step.image:
            if self.container_executor is None:
                outcome = StepOutcome(None, "failed", 0.0)
                output.note("no container runtime is available for this step")
            else:
                outcome = self.container_executor(
                    run_id=run.id,
                    step=step,
                    args=args,
                    env=dict(job.env),
                    deadline=step_deadline,
                    should_stop=should_stop,
                    output=output,
                    job=job,
                    settings=self.settings,
                )
        else:
            task = HostStep(
                run_id=run.id,
                step=step,
                env=host_environment(
                    run.id, job, step, args, profile, workdir, self.settings, source_dir=active.source_dir
                ),
                cwd=str(workdir),
                deadline=step_deadline,
                should_stop=should_stop,
                output=output,
                limits=host_limits(profile, self.settings),
                on_spawn=lambda pgid: self.store.set_pgid(run.id, pgid),
                containment=containment,
            )
            outcome = run_host_step(task)
        self.store.emit(
            run.id,
            EventType.STEP_FINISHED.value,
            {
                "step": step.name,
                "index": index,
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "duration": round(outcome.duration, 6),
            },
        )
        return outcome
