"""Plans: what a run would execute, every policy decision, and a digest of it.

The digest is an HMAC (keyed per installation) over the job's revision and
file digest, the resolved arguments, the steps and the profile: a run
submitted with ``"plan": DIGEST`` runs only if planning again gives the same
digest.  Keying it means a digest reveals nothing about secret arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .auth.scopes import Scope
from .catalog import Catalog
from .config import Settings
from .errors import AmbiguousJob, InvalidArgs, NotFound, SourceNotFound, Unprocessable
from .jobs.arguments import arg_env, render_command, render_group, resolve_args
from .models import (
    ArgSpec,
    Concurrency,
    Containment,
    Decision,
    Job,
    OutputSpec,
    Plan,
    Principal,
    Profile,
    Step,
    Verdict,
)
from .policy import PolicyContext, SignatureResult, downgrade_decision, evaluate, host_env_passthrough

MAX_ARG_STRLEN = 32 * 4096  # Linux refuses one argv or environment string longer than this, its NUL included
MAX_ARG_TOTAL = 6 * 1024 * 1024  # ... and argv + envp over a quarter of the stack limit, at most this
EXEC_HEADROOM = 16 * 1024  # what the runner adds as a step starts: PATH, HOME, FLWD_*, the ulimit wrapper
MAX_GROUP = 256  # characters of a rendered concurrency group (the store keeps and indexes it)


@dataclass(frozen=True)
class PlanRequest:
    job: str
    args: dict[str, Any]
    source: str | None = None
    profile: Profile | None = None
    plan: str | None = None
    problems: tuple[dict[str, str], ...] = ()  # the body's invalid fields, named with the arguments' in one 422
    callback: str | None = None  # a run's callback URL (POST /runs only; checked by the engine, runs/callbacks.py)


class Planner:
    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        digest_key: Callable[[], bytes],
        runtime: Callable[[], tuple[str | None, str | None]] = lambda: (None, "no container runtime is configured"),
        verify_signature: Callable[[str], SignatureResult] | None = None,
        containment: Containment | None = None,
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self._digest_key = digest_key
        self._key: bytes | None = None  # the installation's digest key never changes: read it once
        self._runtime = runtime
        self._verify_signature = verify_signature
        self.containment = containment or Containment()

    @property
    def default_profile(self) -> Profile:
        return Profile(self.settings.default_profile)

    def plan(self, request: PlanRequest, principal: Principal) -> Plan:
        if not request.problems:
            job = self.catalog.resolve(request.job, request.source)
            return self.plan_job(job, resolve_args(job, request.args), request.profile, principal)
        problems = list(request.problems)
        try:
            job = self.catalog.resolve(request.job, request.source)
            resolve_args(job, request.args)
        except Unprocessable as exc:  # the arguments' problems, or a source hint at odds with "source"
            problems.extend(exc.errors or [{"field": "job", "message": exc.detail}])
        except (NotFound, AmbiguousJob) as exc:
            field = "source" if isinstance(exc, SourceNotFound) and request.source else "job"
            problems.append({"field": field, "message": exc.detail})
        raise Unprocessable(invalid_request(problems), problems)

    def plan_job(self, job: Job, args: dict[str, Any], requested: Profile | None, principal: Principal) -> Plan:
        default = self.default_profile
        profile = requested or default
        decisions: list[Decision] = []
        if requested is not None and requested.is_weaker_than(default):
            downgrade = downgrade_decision(
                default,
                requested,
                self.settings.policy.allowed_downgrades,
                principal.has_scope(Scope.RUNS_DOWNGRADE),
                principal.subject,
            )
            decisions.append(downgrade)
            if downgrade.verdict is Verdict.DENY:
                profile = default
        problems = exec_problems(job, args, host_env_passthrough(job, profile, self.settings))
        if problems:
            fields = ", ".join(p["field"] for p in problems)
            raise InvalidArgs(f"job {job.name!r} could not start its steps (too large for exec): {fields}", problems)
        group = concurrency_group(job, args)
        decisions.extend(evaluate(self.context(job, profile)))
        digest = self.digest(job, args, profile)
        return Plan(
            job=job,
            args=args,
            profile=profile,
            decisions=tuple(decisions),
            digest=digest,
            requested_profile=requested,
            group=group,
        )

    def context(self, job: Job, profile: Profile) -> PolicyContext:
        """What policy judges ``job`` by; its source as the caller just read it (resolving the job, or its files)."""
        source_kind, spec = "local", {}
        source = self.catalog.last_read(job.source)
        if source is not None:  # None: a source removed since planning; policy still judges the job itself
            source_kind, spec = source.kind, source.spec
        runtime, problem = (None, None)
        if any(step.image for step in job.steps):
            runtime, problem = self._runtime()
        return PolicyContext(
            job=job,
            profile=profile,
            settings=self.settings,
            source_kind=source_kind,
            source_spec=spec,
            runtime=runtime,
            runtime_problem=problem,
            verify_signature=self._verify_signature,
            containment=self.containment,
        )

    def digest(self, job: Job, args: dict[str, Any], profile: Profile) -> str:
        """HMAC over what would run: the job's definition (cached per revision), the args, the profile."""
        if self._key is None:
            self._key = self._digest_key()
        tail = json.dumps(
            {"args": args, "profile": profile.value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        material = _job_canonical(job) + "\n" + tail
        return "sha256:" + hmac.new(self._key, material.encode(), hashlib.sha256).hexdigest()


def concurrency_group(job: Job, args: dict[str, Any]) -> str | None:
    """The run's concurrency group (None: the job declares none); a 422 if the arguments make it too long."""
    if job.concurrency is None:
        return None
    group = render_group(job.concurrency.group, args)
    if not group or len(group) > MAX_GROUP or "\x00" in group:
        problem = f"makes the concurrency group {len(group)} characters long; a group is 1 to {MAX_GROUP}"
        raise InvalidArgs(
            f"job {job.name!r}: the arguments make an invalid concurrency group",
            [{"field": "args", "message": problem}],
        )
    return group


def invalid_request(problems: list[dict[str, str]]) -> str:
    """The detail of a 422 naming every invalid field of a request."""
    return "invalid request: " + ", ".join(p["field"] for p in problems)


def exec_limit() -> int:
    """The bytes of argv + environment (strings and pointers) a process may start with here."""
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        limit = -1
    return min(limit if limit > 0 else 2 * 1024 * 1024, MAX_ARG_TOTAL) - EXEC_HEADROOM


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + 1  # the bytes exec copies, NUL included


def exec_problems(job: Job, args: dict[str, Any], passthrough: dict[str, str]) -> list[dict[str, str]]:
    """What would make a step's exec fail with E2BIG, each named by its field; sizes are UTF-8 bytes.

    A step's strings are its environment (the host's variables passed through, the job's and the
    step's ``env``, ``FLWD_ARG_*``) and its argv (a shell step's script, a container step's command).
    """
    names = {f"FLWD_ARG_{name.upper()}": f"args.{name}" for name in args}
    problems: dict[str, str] = {}
    limit = exec_limit()
    for i, step in enumerate(job.steps):
        env = {k: (f"host_env.{k}", v) for k, v in (passthrough.items() if step.run is not None else ())}
        env.update({k: (f"env.{k}", v) for k, v in job.env})
        env.update({k: (f"steps[{i}].env.{k}", v) for k, v in step.env})
        env.update({k: (names[k], v) for k, v in arg_env(args).items()})
        sizes = [(field, _size(f"{k}={v}")) for k, (field, v) in env.items()]
        if step.run is not None:
            sizes.append((f"steps[{i}].run", _size(step.run)))
        else:
            sizes.extend(
                (f"steps[{i}].command[{j}]", _size(part)) for j, part in enumerate(render_command(step.command, args))
            )
        for field, size in sizes:
            if size > MAX_ARG_STRLEN:
                problems.setdefault(
                    field,
                    f"is {size - 1} bytes where step {step.name!r} starts; Linux refuses a string over {MAX_ARG_STRLEN - 1} bytes",
                )
        total = sum(size + 8 for _, size in sizes)  # each string and its pointer
        if total > limit and not problems:
            field = max(sizes, key=lambda item: item[1])[0]
            problems[field] = (
                f"the largest part of the {total} bytes of arguments and environment step {step.name!r} would start with; the limit here is {limit}"
            )
    return [{"field": field, "message": message} for field, message in problems.items()]


_JOB_TEXT: dict[tuple[str, str | None, str], tuple[str, str]] = {}


def _job_texts(job: Job) -> tuple[str, str]:
    """``(canonical JSON for the digest, JSON for the plan record)`` of a job, made once per revision."""
    key = (job.qualified_name, job.revision, job.file_digest)
    texts = _JOB_TEXT.get(key)
    if texts is None:
        material = {
            "job": job.qualified_name,
            "revision": job.revision,
            "file": job.file_digest,
            "env": dict(job.env),
            "timeout": job.timeout,
            "requires": list(job.requires),
            "steps": [s.to_dict() for s in job.steps],
        }
        if job.concurrency is not None:  # only when declared: every other job's digest stays as it was
            material["concurrency"] = job.concurrency.to_dict()
        texts = (
            json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            json.dumps(job.to_dict(), separators=(",", ":"), ensure_ascii=False),
        )
        if len(_JOB_TEXT) >= 4096:
            _JOB_TEXT.clear()
        _JOB_TEXT[key] = texts
    return texts


def _job_canonical(job: Job) -> str:
    return _job_texts(job)[0]


def plan_record(plan: Plan) -> str:
    """Everything a worker needs to execute the run, as the JSON stored with it (a later sync changes nothing)."""
    rest = json.dumps(
        {
            "file_digest": plan.job.file_digest,
            "args": plan.args,
            "secret_args": [a.name for a in plan.job.args if a.secret],
            "profile": plan.profile.value,
            "decisions": [d.to_dict() for d in plan.decisions],
            "digest": plan.digest,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return '{"job":' + _job_texts(plan.job)[1] + "," + rest[1:]


def job_from_record(record: dict[str, Any]) -> Job:
    data = record["job"]
    return Job(
        name=data["name"],
        source=data["source"],
        description=data.get("description", ""),
        args=tuple(
            ArgSpec(name=k, **{**v, "choices": tuple(v["choices"]) if v.get("choices") else None})
            for k, v in data.get("args", {}).items()
        ),
        requires=tuple(data.get("requires", ())),
        timeout=float(data.get("timeout", 3600)),
        env=tuple(sorted((data.get("env") or {}).items())),
        steps=tuple(Step.from_dict(s) for s in data.get("steps", ())),
        path=data.get("path", ""),
        revision=data.get("revision"),
        file_digest=record.get("file_digest", ""),
        outputs=tuple(OutputSpec(name=k, **v) for k, v in (data.get("outputs") or {}).items()),
        concurrency=Concurrency(**data["concurrency"]) if data.get("concurrency") else None,
        approvals=(data.get("approval") or {}).get("required", 0),
    )
