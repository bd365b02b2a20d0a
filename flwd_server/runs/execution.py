"""One run's execution, from the policy check to its last event.

The runner (runner.py) decides *when* a run executes: it claims runs from the
store and hands each to a pool thread.  This module is *what* happens then:
the run's policy decisions, its containment, each step on the host or in a
container with its output captured, and the record of how it ended.  A
:class:`RunExecutor` is shared by a runner's threads; what belongs to the
process (its owner id, cgroup pool and subreaper, remade after a fork) is
passed in with each run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from json.encoder import encode_basestring as encode_json_string  # the C encoder, as json.dumps(ensure_ascii=False)
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import FlwdError, StorageError
from ..jobs.arguments import arg_env, render_command
from ..models import Decision, EventType, Job, Profile, Run, RunStatus, Step, Verdict
from ..planner import Planner, job_from_record
from ..policy import evaluate, log_decision
from ..store import Store
from ..store.queries import ClaimedRun
from .artifact_collector import collect_artifacts
from .capture import OutputBudget, SecretMask, StepOutput, secret_mask
from .cgroups import Caps, GroupPool, RunGroup, cap_reason
from .environment import artifacts_folder, host_environment, host_limits, make_workdir, remove_workdir
from .host_executor import HostStep, StepOutcome, run_host_step
from .outputs import CONTAINER_PATH, OutputError, RunOutputs, exec_problem
from .reaper import RunReaper, Subreaper
from .workdirs import RunDirs, WorkDirPool, outputs_dir

log = logging.getLogger("flwd.runner")

OUTPUT = EventType.STEP_OUTPUT.value
MAX_CACHED_JOBS = 256


@dataclass
class ActiveRun:
    """A run this process executes: how to stop it, and how it ended if stopped."""

    run: Run
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None
    status: str = "cancelled"
    source_dir: str | None = None


class RunExecutor:
    def __init__(
        self,
        store: Store,
        planner: Planner,
        settings: Settings,
        container_executor: Callable[..., StepOutcome] | None = None,
    ) -> None:
        self.store = store
        self.planner = planner
        self.settings = settings
        self.container_executor = container_executor
        self._jobs: dict[str, Job] = {}

    def _decide(self, run_id: str, decisions: tuple[Decision, ...] | list[Decision]) -> None:
        for decision in decisions:
            self.store.emit(run_id, EventType.POLICY_DECISION.value, decision.to_dict())
            log_decision(run_id, decision)

    def execute(
        self,
        claimed: ClaimedRun,
        active: ActiveRun,
        *,
        owner: str,
        groups: GroupPool | None,
        reaper: Subreaper | None,
        workdirs: WorkDirPool | None = None,
    ) -> None:
        """Run ``claimed`` to its end and record it; never raises (a fault ends the run ``failed``)."""
        run = claimed.run
        status, exit_code, reason = RunStatus.FAILED, None, None
        dirs: RunDirs | None = None
        containment: RunGroup | RunReaper | None = None
        outputs: RunOutputs | None = None
        scrub = True
        secrets: SecretMask | None = None
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
                {"owner": owner, "profile": profile.value, "submitted_by": run.submitted_by},
            )
            dirs = self._dirs(run.id, workdirs)
            workdir = dirs.workdir
            deadline = time.time() + job.timeout
            budget = OutputBudget(self.settings.limits.max_output_bytes)
            secrets = self._secret_mask(run.id, record.get("secret_args") or (), args)
            cap = self.settings.limits.max_run_outputs_bytes
            outputs = RunOutputs(self.settings.resolved_data_dir / "work", run.id, job, cap, secrets)
            containment = self._contain(run.id, profile, groups, reaper)
            status = RunStatus.SUCCEEDED
            for index, step in enumerate(job.steps):
                outcome = self._run_step(
                    run,
                    job,
                    step,
                    index,
                    args,
                    profile,
                    workdir,
                    deadline,
                    active,
                    budget,
                    secrets,
                    containment,
                    outputs,
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
            if status is RunStatus.SUCCEEDED and outputs.missing():
                status, reason = RunStatus.FAILED, outputs.missing()
        except FlwdError as exc:  # an expected fault (e.g. the data dir is read-only): one line, its reason
            log.error("run %s failed: %s", run.id, exc.detail, extra={"run_id": run.id})
            status, reason = RunStatus.FAILED, exc.detail
        except Exception as exc:
            log.exception("run %s failed inside flwd", run.id)
            status, reason = RunStatus.FAILED, f"flwd could not execute the run: {type(exc).__name__}"
        finally:
            settled = False  # nothing of the run can still write into its directories
            if isinstance(containment, RunGroup) and groups is not None:
                settled = groups.release(containment)  # kills whatever a step left running, wherever it went
            elif containment is not None:
                containment.remove()
            if dirs is not None:
                collect_artifacts(self.store, self.settings, run.id, dirs.workdir, secrets)  # its processes are gone
                if workdirs is not None:
                    workdirs.release(dirs, reusable=settled)
                else:
                    remove_workdir(dirs.workdir)
                    if outputs is not None:
                        outputs.remove()
            try:
                # Queued behind the run's own events; the next claim is queued behind it.
                shown = outputs.public() if outputs is not None else None
                self.store.finish_run(
                    run.id, status, exit_code=exit_code, reason=reason, outputs=shown, scrub=scrub, wait=False
                )
            except Exception:
                log.exception("could not record the end of run %s", run.id)

    def _dirs(self, run_id: str, workdirs: WorkDirPool | None) -> RunDirs:
        if workdirs is not None:
            return workdirs.acquire(run_id)
        workdir = make_workdir(self.settings.resolved_data_dir / "work", run_id)
        return RunDirs(workdir, outputs_dir(workdir))  # made by RunOutputs

    def _contain(
        self, run_id: str, profile: Profile, groups: GroupPool | None, reaper: Subreaper | None
    ) -> RunGroup | RunReaper | None:
        """The run's cgroups, or, where there are none, its share of this process's subreaper."""
        if groups is not None:
            group = groups.acquire(run_id, Caps.of(profile, self.settings.policy))
            if group is not None:
                return group
        if reaper is not None and reaper.enabled:
            return RunReaper(reaper, run_id)
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
            if len(self._jobs) >= MAX_CACHED_JOBS:
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
        active: ActiveRun,
        budget: OutputBudget,
        secrets: SecretMask,
        containment: RunGroup | RunReaper | None,
        outputs: RunOutputs,
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

        path = outputs.file_for(index, container=bool(step.image))
        if step.image:
            env = {**dict(job.env), **outputs.step_env(CONTAINER_PATH)}
            too_large = exec_problem(
                {**env, **dict(step.env), **arg_env(args)}, render_command(step.command, args), outputs.values
            )
        else:
            env = host_environment(
                run.id, job, step, args, profile, workdir, self.settings, source_dir=active.source_dir
            )
            env.update(outputs.step_env(str(path)))
            too_large = exec_problem(env, [step.run or ""], outputs.values)
        if too_large:
            outcome = StepOutcome(None, "failed", 0.0, f"step {step.name!r} could not start: {too_large}")
            output.note(outcome.reason or "")
        elif step.image:
            if self.container_executor is None:
                outcome = StepOutcome(None, "failed", 0.0)
                output.note("no container runtime is available for this step")
            else:
                outcome = self.container_executor(
                    run_id=run.id,
                    step=step,
                    args=args,
                    env=env,
                    deadline=step_deadline,
                    should_stop=should_stop,
                    output=output,
                    job=job,
                    settings=self.settings,
                    output_file=str(path),
                    artifacts=str(artifacts_folder(workdir)),
                )
        else:
            task = HostStep(
                run_id=run.id,
                step=step,
                env=env,
                cwd=str(workdir),
                deadline=step_deadline,
                should_stop=should_stop,
                output=output,
                limits=host_limits(profile, self.settings),
                # Only the lost-run sweep reads a stored pgid; a run's cgroup already holds all of its
                # processes (that sweep removes a dead process's groups), so no write for it there.
                on_spawn=None if isinstance(containment, RunGroup) else lambda pgid: self.store.set_pgid(run.id, pgid),
                containment=containment,
            )
            outcome = run_host_step(task)
        try:
            outputs.collect(path, step.name)
        except OutputError as exc:  # the step's outputs are refused: it failed, saying why
            problem = outputs.mask(str(exc))
            output.note(problem)
            if outcome.status == "succeeded":
                outcome = StepOutcome(outcome.exit_code, "failed", outcome.duration, problem)
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
