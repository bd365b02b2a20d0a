"""Enums and value objects shared by the core, the web layer and the CLI.

Each object serialises one way (``to_dict``) so JSON, SSE, NDJSON and the CLI
all show the same thing.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .auth.scopes import Grant, grants_of
from .errors import ScopeMissing


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    LOST = "lost"
    AWAITING_APPROVAL = "awaiting_approval"  # a job with ``approval:``: waits for its approvers, never claimed

    @property
    def is_terminal(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.AWAITING_APPROVAL)


TERMINAL_STATUSES = tuple(s.value for s in RunStatus if s.is_terminal)
UNFINISHED_STATUSES = tuple(s.value for s in RunStatus if not s.is_terminal)


class Profile(StrEnum):
    """Security profiles, strictest first."""

    SECURE = "secure"
    PERMISSIVE = "permissive"
    DISABLED = "disabled"

    @property
    def strictness(self) -> int:
        return {"secure": 2, "permissive": 1, "disabled": 0}[self.value]

    def is_weaker_than(self, other: Profile) -> bool:
        return self.strictness < other.strictness


class Verdict(StrEnum):
    ALLOW = "allow"
    WARN = "warn"
    DENY = "deny"


class EventType(StrEnum):
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_CANCEL_REQUESTED = "run.cancel_requested"
    RUN_FINISHED = "run.finished"
    RUN_APPROVAL_REQUESTED = "run.approval_requested"
    RUN_APPROVED = "run.approved"
    POLICY_DECISION = "policy.decision"
    POLICY_PROFILE_DOWNGRADE = "policy.profile_downgrade"
    STEP_STARTED = "step.started"
    STEP_OUTPUT = "step.output"
    STEP_FINISHED = "step.finished"
    ARTIFACT_REFUSED = "artifact.refused"
    ARTIFACTS_COLLECTED = "artifacts.collected"
    SOURCE_SYNCED = "source.synced"
    SOURCE_FAILED = "source.failed"
    CALLBACK_DELIVERED = "callback.delivered"
    CALLBACK_FAILED = "callback.failed"
    RUNS_PRUNED = "runs.pruned"


_SECOND: list = [None, ""]  # the last whole second rendered: events come in bursts within one


def iso(ts: float | None) -> str | None:
    """Render an epoch timestamp as ISO 8601 UTC with milliseconds (``2026-11-28T18:00:00.123Z``)."""
    if ts is None:
        return None
    second = int(ts)
    micros = round((ts - second) * 1_000_000)  # as datetime does: nearest microsecond, then cut to ms
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _SECOND
    if cached[0] != second:
        text = _dt.datetime.fromtimestamp(second, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = [second, text]
        _SECOND[:] = cached
    return f"{cached[1]}.{micros // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC) to epoch seconds."""
    moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.timestamp()


ARG_TYPES = ("string", "integer", "number", "boolean")


@dataclass(frozen=True)
class ArgSpec:
    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    secret: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        if self.default is not None:
            out["default"] = self.default
        for key in ("choices", "pattern", "minimum", "maximum"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if key == "choices" else value
        if self.description:
            out["description"] = self.description
        if self.secret:
            out["secret"] = True
        return out


@dataclass(frozen=True)
class OutputSpec:
    """A declared output (``outputs:`` in a job file): the run fails if a step does not set it, or not as ``type``."""

    name: str
    type: str = "string"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Step:
    """One step: ``run`` (a host shell step) or ``image`` (a container step)."""

    name: str
    run: str | None = None
    image: str | None = None
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    timeout: float | None = None
    privileged: bool = False
    network: str | None = None  # for containers: None (runtime default per policy) or "host"

    @property
    def kind(self) -> str:
        return "container" if self.image else "shell"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.run is not None:
            out["run"] = self.run
        if self.image is not None:
            out["image"] = self.image
            out["command"] = list(self.command)
            if self.workdir:
                out["workdir"] = self.workdir
            if self.privileged:
                out["privileged"] = True
            if self.network:
                out["network"] = self.network
        if self.env:
            out["env"] = dict(self.env)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(
            name=data["name"],
            run=data.get("run"),
            image=data.get("image"),
            command=tuple(data.get("command", ())),
            env=tuple(sorted((data.get("env") or {}).items())),
            workdir=data.get("workdir"),
            timeout=data.get("timeout"),
            privileged=bool(data.get("privileged", False)),
            network=data.get("network"),
        )


WHEN_BUSY = ("queue", "reject", "replace")  # a concurrency group's answer to a run that finds it busy


@dataclass(frozen=True)
class Concurrency:
    """A job's ``concurrency:``: at most ``limit`` runs of the group (a template over the args) at once."""

    group: str
    limit: int = 1
    when_busy: str = "queue"

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "limit": self.limit, "when_busy": self.when_busy}


@dataclass(frozen=True)
class Job:
    name: str
    source: str
    description: str = ""
    args: tuple[ArgSpec, ...] = ()
    requires: tuple[str, ...] = ()
    timeout: float = 3600
    env: tuple[tuple[str, str], ...] = ()
    steps: tuple[Step, ...] = ()
    path: str = ""
    revision: str | None = None
    file_digest: str = ""
    outputs: tuple[OutputSpec, ...] = ()
    concurrency: Concurrency | None = None
    approvals: int = 0  # ``approval: {required: N}``: distinct approvers a run waits for (0: none)

    @property
    def qualified_name(self) -> str:
        return f"{self.source}:{self.name}"

    def arg(self, name: str) -> ArgSpec | None:
        return next((a for a in self.args if a.name == name), None)

    def summary(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "args": {a.name: a.to_dict() for a in self.args},
            "outputs": {o.name: o.to_dict() for o in self.outputs},
        }
        if self.approvals:
            out["approval"] = {"required": self.approvals}
        return out

    def to_dict(self) -> dict[str, Any]:
        out = self.summary()
        out.update(
            {
                "requires": list(self.requires),
                "timeout": self.timeout,
                "env": dict(self.env),
                "steps": [s.to_dict() for s in self.steps],
                "path": self.path,
                "revision": self.revision,
            }
        )
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency.to_dict()
        return out


@dataclass(frozen=True)
class Containment:
    """How this host contains a run's processes: what policy reports (runs/cgroups.py finds it)."""

    mechanism: str | None = None  # "cgroup2" (killed as one), "cgroup1" (one by one), "subreaper", None
    caps: frozenset[str] = frozenset()  # of "processes", "memory"


@dataclass(frozen=True)
class Decision:
    check: str
    verdict: Verdict
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "outcome": self.verdict.value, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(check=data["check"], verdict=Verdict(data["outcome"]), reason=data["reason"])


@dataclass(frozen=True)
class Plan:
    """What a run would execute: the input of a run and the answer of POST /plans."""

    job: Job
    args: dict[str, Any]
    profile: Profile
    decisions: tuple[Decision, ...]
    digest: str
    requested_profile: Profile | None = None
    group: str | None = None  # the concurrency group, rendered from the job's template and these args

    @property
    def runnable(self) -> bool:
        return all(d.verdict is not Verdict.DENY for d in self.decisions)

    @property
    def denials(self) -> list[Decision]:
        return [d for d in self.decisions if d.verdict is Verdict.DENY]

    def group_spec(self) -> tuple[str, int, str] | None:
        """``(group, limit, when_busy)`` as the store takes it; None for a job without ``concurrency``."""
        spec = self.job.concurrency
        return None if spec is None or self.group is None else (self.group, spec.limit, spec.when_busy)

    def concurrency_view(self) -> dict[str, Any] | None:
        spec = self.group_spec()
        return None if spec is None else {"group": spec[0], "limit": spec[1], "when_busy": spec[2]}

    def public_args(self) -> dict[str, Any]:
        """Args with secret values masked, for anything a client or log sees."""
        return redact_args(self.job, self.args)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job.name,
            "source": self.job.source,
            "revision": self.job.revision,
            "description": self.job.description,
            "args": self.public_args(),
            "requires": list(self.job.requires),
            "timeout": self.job.timeout,
            "steps": [s.to_dict() for s in self.job.steps],
            "profile": self.profile.value,
            "decisions": [d.to_dict() for d in self.decisions],
            "runnable": self.runnable,
            "digest": self.digest,
            "concurrency": self.concurrency_view(),
        }


SECRET_MASK = "***"


def redact_args(job: Job, args: dict[str, Any]) -> dict[str, Any]:
    secret = {a.name for a in job.args if a.secret}
    return {k: (SECRET_MASK if k in secret else v) for k, v in args.items()}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and the scopes it holds."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def has_scope(self, scope: str) -> bool:
        """Whether it holds ``scope`` itself (a narrowed ``runs:read:SOURCE:JOB`` is not ``runs:read``)."""
        return scope in self.scopes

    def may_use(self, scope: str) -> bool:
        """Whether a route declaring ``scope`` is open to it: the scope, or the scope narrowed to some jobs."""
        return scope in self.scopes or bool(grants_of(self.scopes, scope))

    def grants(self, scope: str) -> frozenset[Grant] | None:
        """The jobs ``scope`` is held for: None for every job, else the ``SOURCE:JOB`` grants (maybe none)."""
        return grants_of(self.scopes, scope)

    def allows(self, scope: str, source: str, job: str) -> bool:
        """Whether it holds ``scope`` for job ``job`` of source ``source``."""
        grants = self.grants(scope)
        return grants is None or any(g.matches(source, job) for g in grants)

    def require(self, scope: str, source: str, job: str) -> None:
        """A 403 naming the narrowed scope this job needs, unless ``allows``."""
        if not self.allows(scope, source, job):
            raise ScopeMissing(f"{scope}:{source}:{job}")


class Event:
    """One stored event.  ``raw`` is the data as stored JSON text, parsed only when needed,
    so streaming an event to a thousand clients serialises it once."""

    __slots__ = ("id", "run_id", "type", "ts", "raw", "_data", "_frame")

    def __init__(self, id: int, run_id: str | None, type: str, ts: float, raw: str) -> None:
        self.id = id
        self.run_id = run_id
        self.type = type
        self.ts = ts
        self.raw = raw
        self._data: dict[str, Any] | None = None
        self._frame: bytes | None = None

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self.raw)
        return self._data

    def to_json(self) -> str:
        """The event as one JSON object, built around the stored text without re-encoding it."""
        run_id = self.run_id
        run = f'"{run_id}"' if run_id is not None and run_id.isalnum() else json.dumps(run_id)
        return f'{{"id":{self.id},"run_id":{run},"type":"{self.type}","time":"{iso(self.ts)}","data":{self.raw}}}'

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run_id": self.run_id, "type": self.type, "time": iso(self.ts), "data": self.data}

    def sse_frame(self) -> bytes:
        if self._frame is None:
            self._frame = f"id: {self.id}\nevent: {self.type}\ndata: {self.to_json()}\n\n".encode()
        return self._frame

    def __repr__(self) -> str:
        return f"Event({self.id}, {self.run_id!r}, {self.type!r})"


@dataclass(frozen=True)
class Run:
    id: str
    job: str
    source: str
    revision: str | None
    args: dict[str, Any]
    status: RunStatus
    profile: str
    submitted_by: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    plan_digest: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  # set when the run ends (runs/outputs.py)
    callback: dict[str, Any] | None = None  # where the run's end is POSTed, and how far that got (store/deliveries.py)
    queue: dict[str, Any] | None = None  # a queued run's place and why it waits (store/queue.py); None otherwise

    def to_dict(self, base_url: str = "") -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "source": self.source,
            "revision": self.revision,
            "args": self.args,
            "status": self.status.value,
            "profile": self.profile,
            "submitted_by": self.submitted_by,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "exit_code": self.exit_code,
            "reason": self.reason,
            "plan_digest": self.plan_digest,
            "outputs": self.outputs,
            "callback": self.callback,
            "queue": self.queue,
            "links": {
                "self": f"{base_url}/runs/{self.id}",
                "events": f"{base_url}/runs/{self.id}/events",
            },
        }
