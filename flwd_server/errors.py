"""The one error tree of flwd.

Every error a user can cause or act on is a :class:`FlwdError` subclass with a
message that says what to do.  The web layer turns them into
``application/problem+json`` in one place (``web/problems.py``); the CLI prints
them.  Nothing else is ever shown to a client.
"""

from __future__ import annotations

from typing import Any


class FlwdError(Exception):
    """Base class: a problem with a stable slug, an HTTP status and a message."""

    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        return {
            **self.extra,
            "type": f"urn:flwd:error:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class ConfigError(FlwdError):
    """Raised when the configuration is invalid; ``key`` names the setting."""

    status = 500
    slug = "config-error"
    title = "Invalid configuration"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message, key=key)
        self.key = key


class BadRequest(FlwdError):
    """Raised when a request is malformed (not JSON, wrong shape)."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class UnsupportedMediaType(FlwdError):
    """Raised when a request body is not ``application/json``."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class MisdirectedRequest(FlwdError):
    """Raised by a ``--dev`` server for a request whose ``Host`` it does not answer (DNS rebinding)."""

    status = 421
    slug = "misdirected-request"
    title = "Misdirected request"


class PayloadTooLarge(FlwdError):
    """Raised when a request body exceeds ``limits.max_body_bytes``."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class Unprocessable(FlwdError):
    """Raised when a request is well-formed but its fields are invalid.

    ``errors`` is a list of ``{"field": ..., "message": ...}`` so that every
    invalid field is named at once, not one per round trip.
    """

    status = 422
    slug = "invalid-request"
    title = "Invalid request"

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail, errors=errors or [])
        self.errors = errors or []


class InvalidArgs(Unprocessable):
    """Raised when job arguments do not match the job's argument schema."""

    slug = "invalid-args"
    title = "Invalid job arguments"


class InvalidJob(FlwdError):
    """Raised when a job file does not follow the job format."""

    status = 422
    slug = "invalid-job"
    title = "Invalid job file"

    def __init__(self, path: str, errors: list[dict[str, Any]]) -> None:
        fields = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"{path}: {fields}", path=path, errors=errors)
        self.path = path
        self.errors = errors


class NotFound(FlwdError):
    """Raised when a named job, run or source does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class JobNotFound(NotFound):
    """Raised when no source holds a job of the requested name."""

    slug = "job-not-found"
    title = "Job not found"


class RunNotFound(NotFound):
    """Raised when a run id is unknown (or was pruned from history)."""

    slug = "run-not-found"
    title = "Run not found"


class SourceNotFound(NotFound):
    """Raised when a source name is unknown."""

    slug = "source-not-found"
    title = "Source not found"


class ArtifactNotFound(NotFound):
    """Raised when a run has no artifact at the path asked for."""

    slug = "artifact-not-found"
    title = "Artifact not found"


class Conflict(FlwdError):
    """Raised when a request conflicts with the current state."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class AmbiguousJob(Conflict):
    """Raised when a job name resolves in several sources and no hint was given."""

    slug = "ambiguous-job"
    title = "Ambiguous job name"

    def __init__(self, name: str, candidates: list[str]) -> None:
        super().__init__(
            f"job {name!r} exists in several sources; name one of: {', '.join(candidates)}",
            candidates=candidates,
        )
        self.candidates = candidates


class PlanChanged(Conflict):
    """Raised when a run asks for a plan digest that planning no longer gives."""

    slug = "plan-changed"
    title = "Plan changed"


class RunFinished(Conflict):
    """Raised when cancelling a run that already ended."""

    slug = "run-finished"
    title = "Run already finished"


class NotAwaitingApproval(Conflict):
    """Raised when approving or denying a run that does not await approval (any more)."""

    slug = "not-awaiting-approval"
    title = "Run not awaiting approval"


class ApprovalMismatch(Conflict):
    """Raised when an approval names another digest than the run's plan: approvers approve exactly what will run."""

    slug = "approval-digest-mismatch"
    title = "Approval for another plan"


class AlreadyApproved(Conflict):
    """Raised when an approver approves the same run twice: each approver counts once."""

    slug = "already-approved"
    title = "Already approved"


class SelfApproval(FlwdError):
    """Raised when the submitter of a run approves it: approval is a second person's (two-person rule)."""

    status = 403
    slug = "self-approval"
    title = "Cannot approve one's own run"


class IdempotencyMismatch(Unprocessable):
    """Raised when an Idempotency-Key is reused with a different request body."""

    slug = "idempotency-key-reused"
    title = "Idempotency key reused with another request"


class PolicyDenied(FlwdError):
    """Raised when policy forbids what was asked (e.g. a profile downgrade)."""

    status = 403
    slug = "policy-denied"
    title = "Denied by policy"


class Unauthenticated(FlwdError):
    """Raised when a request has no valid bearer token.

    ``error`` is the RFC 6750 error code, or None when no credentials were sent;
    ``invalid_request`` (a malformed request, e.g. a token sent twice) is a 400.
    """

    status = 401
    slug = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        self.error = error
        if error == "invalid_request":
            self.status = 400


class ScopeMissing(FlwdError):
    """Raised when a valid token lacks the scope a route needs."""

    status = 403
    slug = "insufficient-scope"
    title = "Insufficient scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this request needs the scope {scope!r}", scope=scope)
        self.scope = scope


class UnsafeSource(FlwdError):
    """Raised when a source URL, ref or path is refused as unsafe."""

    status = 422
    slug = "unsafe-source"
    title = "Unsafe source"


class SourceError(FlwdError):
    """Raised when a source cannot be fetched or read."""

    status = 502
    slug = "source-error"
    title = "Source error"


class Unavailable(FlwdError):
    """Raised when the server cannot take the request now (shutting down, full)."""

    status = 503
    slug = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StorageError(FlwdError):
    """Raised when the database or the data dir cannot be written (disk full, read-only)."""

    status = 503
    slug = "storage-unavailable"
    title = "Storage unavailable"


class ArtifactUnavailable(StorageError):
    """Raised when the store records an artifact whose file this node cannot read (a shared mount missing)."""

    slug = "artifact-unavailable"
    title = "Artifact unavailable"


def disk_error(action: str, path: Any, exc: OSError) -> StorageError:
    """A write under the data dir that the disk refused: what failed, where, and the system's reason.

    ``disk_error("could not create the run's work dir", path, exc)`` ->
    "could not create the run's work dir PATH: read-only file system".
    """
    why = exc.strerror or type(exc).__name__
    return StorageError(f"{action} {path}: {why[:1].lower()}{why[1:]}")
