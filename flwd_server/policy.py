"""Security profiles and the checks they apply.

Each check is a small pure function over a :class:`PolicyContext` returning
findings: ``ok`` or not, with a reason a sysadmin can read.  The profile turns
a failed finding into a decision: ``secure`` denies, ``permissive`` warns,
``disabled`` runs no check at all (one decision says so).  A *hard* finding
(something that cannot work, like a missing container runtime) denies under
every profile.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .containers.images import parse_image_ref, registry_allowed
from .errors import FlwdError
from .models import Containment, Decision, Job, Profile, Verdict

decision_log = logging.getLogger("flwd.decisions")

COMMIT_RE = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def host_env_passthrough(job: Job, profile: Profile, settings: Settings) -> dict[str, str]:
    """The server's variables a host step of ``job`` gets: none unless it requires ``host-env`` outside ``secure``."""
    if "host-env" not in job.requires or profile is Profile.SECURE:
        return {}
    allowed = settings.policy.host_env_passthrough
    return {k: v for k, v in os.environ.items() if not allowed or k in allowed}


@dataclass(frozen=True)
class SignatureResult:
    """Outcome of checking one image's signature: ``verified``, ``unsigned``, ``invalid`` or ``error``."""

    status: str
    reason: str


@dataclass(frozen=True)
class PolicyContext:
    job: Job
    profile: Profile
    settings: Settings
    source_kind: str = "local"
    source_spec: dict[str, Any] = field(default_factory=dict)
    runtime: str | None = None  # the container engine found, or None
    runtime_problem: str | None = None
    verify_signature: Callable[[str], SignatureResult] | None = None
    containment: Containment = field(default_factory=Containment)


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    reason: str
    hard: bool = False  # cannot work: denies under every profile
    soft: bool = False  # only ever warns, even under secure


Check = Callable[[PolicyContext], list[Finding]]


def _container_steps(ctx: PolicyContext):
    return [s for s in ctx.job.steps if s.image]


def check_container_runtime(ctx: PolicyContext) -> list[Finding]:
    if not _container_steps(ctx):
        return []
    if ctx.runtime:
        return [Finding("container-runtime", True, f"container steps run on {ctx.runtime}")]
    return [Finding("container-runtime", False, ctx.runtime_problem or "no container runtime is available", hard=True)]


def check_image_registry(ctx: PolicyContext) -> list[Finding]:
    out = []
    allowed = ctx.settings.container.allowed_registries
    for step in _container_steps(ctx):
        try:
            ref = parse_image_ref(step.image)
        except FlwdError as exc:
            out.append(Finding("image-registry", False, f"step {step.name!r}: {exc.detail}", hard=True))
            continue
        if registry_allowed(ref, allowed):
            out.append(Finding("image-registry", True, f"step {step.name!r}: registry {ref.registry} is allowed"))
        else:
            listed = ", ".join(allowed) or "none configured"
            out.append(
                Finding(
                    "image-registry",
                    False,
                    f"step {step.name!r}: registry {ref.registry} is not in container.allowed_registries ({listed})",
                )
            )
    return out


def check_image_pinned(ctx: PolicyContext) -> list[Finding]:
    out = []
    for step in _container_steps(ctx):
        try:
            ref = parse_image_ref(step.image)
        except FlwdError:
            continue
        if ref.pinned:
            out.append(Finding("image-digest", True, f"step {step.name!r}: image pinned by digest"))
        else:
            out.append(
                Finding(
                    "image-digest",
                    False,
                    f"step {step.name!r}: image {step.image} is not pinned by digest (@sha256:...), so what runs can change",
                )
            )
    return out


def check_image_signature(ctx: PolicyContext) -> list[Finding]:
    mode = ctx.settings.container.verify_signatures
    out = []
    for step in _container_steps(ctx):
        if mode == "disabled":
            out.append(Finding("image-signature", True, f"step {step.name!r}: signature verification is disabled"))
            continue
        if ctx.verify_signature is None:
            result = SignatureResult("error", "no signature verifier is configured")
        else:
            result = ctx.verify_signature(step.image)
        if result.status == "verified":
            out.append(Finding("image-signature", True, f"step {step.name!r}: {result.reason}"))
        elif mode == "permissive":
            out.append(
                Finding(
                    "image-signature",
                    False,
                    f"step {step.name!r}: {result.reason} (verify_signatures: permissive)",
                    soft=True,
                )
            )
        else:
            out.append(Finding("image-signature", False, f"step {step.name!r}: {result.reason}"))
    return out


def check_privileged(ctx: PolicyContext) -> list[Finding]:
    asked = [s.name for s in _container_steps(ctx) if s.privileged]
    if "privileged" in ctx.job.requires:
        asked.append("(job requires privileged)")
    if not asked and not _container_steps(ctx):
        return []
    if asked:
        return [
            Finding(
                "privileged",
                False,
                f"privileged containers requested: {', '.join(asked)} (flwd never creates a privileged container: "
                "if the run goes ahead, the step runs unprivileged anyway)",
            )
        ]
    return [Finding("privileged", True, "no privileged containers")]


def check_host_network(ctx: PolicyContext) -> list[Finding]:
    asked = [s.name for s in _container_steps(ctx) if s.network == "host"]
    if "host-network" in ctx.job.requires:
        asked.append("(job requires host-network)")
    if not asked and not _container_steps(ctx):
        return []
    if asked:
        return [Finding("host-network", False, f"host networking requested: {', '.join(asked)}")]
    return [Finding("host-network", True, "containers do not share the host network")]


def check_container_network(ctx: PolicyContext) -> list[Finding]:
    steps = _container_steps(ctx)
    if not steps:
        return []
    wants = [s.name for s in steps if s.network in ("default", "host")]
    if "network" in ctx.job.requires:
        return [Finding("container-network", True, "the job requires network; containers get the default network")]
    if wants:
        return [
            Finding(
                "container-network",
                False,
                f"steps {', '.join(wants)} ask for a network the job does not require (add 'network' to requires)",
            )
        ]
    return [Finding("container-network", True, "containers run with network none")]


def check_host_env(ctx: PolicyContext) -> list[Finding]:
    if "host-env" not in ctx.job.requires:
        if any(s.run for s in ctx.job.steps):
            return [
                Finding(
                    "host-env", True, "host steps get a scrubbed environment (PATH, HOME, LANG and the job's variables)"
                )
            ]
        return []
    return [Finding("host-env", False, "the job asks for the server's environment to be passed to its steps")]


def check_git_ref_pinned(ctx: PolicyContext) -> list[Finding]:
    if ctx.source_kind != "git":
        return []
    ref = ctx.source_spec.get("ref") or "HEAD"
    if COMMIT_RE.fullmatch(ref):
        return [Finding("git-ref-pinned", True, f"source {ctx.job.source!r} is pinned to commit {ref[:12]}")]
    return [
        Finding(
            "git-ref-pinned",
            False,
            f"source {ctx.job.source!r} follows ref {ref!r}, not a commit: what runs changes when it moves",
        )
    ]


def check_oci_source_pinned(ctx: PolicyContext) -> list[Finding]:
    if ctx.source_kind != "oci":
        return []
    ref = ctx.source_spec.get("ref", "")
    if "@sha256:" in ref:
        return [Finding("addon-pinned", True, f"add-on {ctx.job.source!r} is pinned by digest")]
    return [Finding("addon-pinned", False, f"add-on {ctx.job.source!r} follows tag {ref!r}, not a digest")]


def check_containment(ctx: PolicyContext) -> list[Finding]:
    """Host steps: whether every process a run starts can be killed, and the run's caps (docs/policy.rst)."""
    if not any(step.run is not None for step in ctx.job.steps):
        return []
    held = ctx.containment
    if held.mechanism == "subreaper":
        reason = "no cgroup: flwd adopts the processes a step leaves behind (a subreaper) and kills them with the run"
        out = [Finding("containment", True, reason)]
    elif held.mechanism:
        out = [Finding("containment", True, f"the run's processes are in a {held.mechanism} group of their own")]
    else:
        out = [
            Finding(
                "containment",
                False,
                "no writable cgroup: a process that leaves the step's process group (setsid, a double fork) "
                "may outlive the run",
                soft=True,
            )
        ]
    policy = ctx.settings.policy
    for cap, setting, text in (
        ("processes", "max_processes", f"at most {policy.max_processes} tasks, threads included"),
        ("memory", "memory_bytes", f"at most {policy.memory_bytes} bytes of memory"),
    ):
        check = f"max-{cap}"
        if cap in held.caps:
            out.append(Finding(check, True, f"the run may hold {text} (policy.{setting})"))
        else:
            out.append(Finding(check, False, f"policy.{setting} is not enforced: no writable {cap} cgroup", soft=True))
    return out


CHECKS: tuple[Check, ...] = (
    check_container_runtime,
    check_image_registry,
    check_image_pinned,
    check_image_signature,
    check_privileged,
    check_host_network,
    check_container_network,
    check_host_env,
    check_git_ref_pinned,
    check_oci_source_pinned,
    check_containment,
)

# Checks that only warn under ``secure``: following a branch is how most teams
# work, and denying it would make git sources unusable by default.
WARN_ONLY = {"git-ref-pinned", "addon-pinned"}


def decide(finding: Finding, profile: Profile) -> Decision:
    if finding.ok:
        return Decision(finding.check, Verdict.ALLOW, finding.reason)
    if finding.hard:
        return Decision(finding.check, Verdict.DENY, finding.reason)
    if profile is Profile.SECURE and not (finding.soft or finding.check in WARN_ONLY):
        return Decision(finding.check, Verdict.DENY, finding.reason)
    return Decision(finding.check, Verdict.WARN, finding.reason)


def evaluate(ctx: PolicyContext) -> tuple[Decision, ...]:
    """Every decision for one job under one profile, in a stable order."""
    if ctx.profile is Profile.DISABLED:
        hard = [f for f in check_container_runtime(ctx) if not f.ok]
        return (Decision("profile", Verdict.WARN, "profile disabled: no policy check runs"),) + tuple(
            decide(f, ctx.profile) for f in hard
        )
    findings = [finding for check in CHECKS for finding in check(ctx)]
    return tuple(decide(f, ctx.profile) for f in findings)


def downgrade_decision(
    default: Profile, requested: Profile, allowed: tuple[str, ...], has_scope: bool, subject: str
) -> Decision:
    """Whether ``subject`` may run under ``requested`` when the server default is ``default``."""
    if not has_scope:
        return Decision(
            "profile-downgrade",
            Verdict.DENY,
            f"{subject} asked for {requested.value} below the default {default.value} without the runs:downgrade scope",
        )
    if requested.value not in allowed:
        return Decision(
            "profile-downgrade",
            Verdict.DENY,
            f"{subject} asked for {requested.value}, which policy.allowed_downgrades does not allow ({', '.join(allowed) or 'none'})",
        )
    return Decision(
        "profile-downgrade", Verdict.WARN, f"{subject} runs under {requested.value}, below the default {default.value}"
    )


def log_decision(run_id: str | None, decision: Decision, job: str | None = None) -> None:
    """One structured line per policy decision (the JSON formatter renders ``extra``)."""
    decision_log.info(
        "policy %s: %s (%s)",
        decision.check,
        decision.verdict.value,
        decision.reason,
        extra={
            "event": "policy.decision",
            "run_id": run_id,
            "job": job,
            "check": decision.check,
            "outcome": decision.verdict.value,
            "reason": decision.reason,
        },
    )
