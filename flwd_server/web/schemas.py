"""JSON Schema pieces of the OpenAPI document, shared by the routes' declarations.

Routes describe their parameters, bodies and answers with these (see
:mod:`flwd_server.web.operations`); ``SCHEMAS`` are the named ones the
document lists under ``components``.  Enums come from where each set is declared (the models, the settings), so a
new run status, profile, verdict, argument or source type shows up here by itself.
"""

from __future__ import annotations

from typing import Any

from ..formats.source_spec import SOURCE_KEYS
from ..models import ARG_TYPES, WHEN_BUSY, EventType, Profile, RunStatus, Verdict

STATUSES = [s.value for s in RunStatus]
PROFILES = [p.value for p in Profile]
EVENT_TYPES = [t.value for t in EventType]
SOURCE_TYPES = list(SOURCE_KEYS)
ARG_TYPE_NAMES = list(ARG_TYPES)
VERDICTS = [v.value for v in Verdict]
PROBLEM_TEXT = {
    400: "Malformed request",
    401: "Missing or invalid bearer token",
    403: "Token lacks the scope, or policy forbids it",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Body is not JSON, or the operation takes no body",
    416: "The range cannot be satisfied",
    422: "Invalid fields",
    502: "The source could not be fetched; the last good revision keeps serving",
    503: "Unavailable; retry later",
}


def ref(name: str) -> dict[str, str]:
    """A reference to one of ``SCHEMAS``."""
    return {"$ref": f"#/components/schemas/{name}"}


def problems(*codes: int) -> dict[str, Any]:
    """Error responses: every error is ``application/problem+json`` (web/problems.py)."""
    return {
        str(c): {"description": PROBLEM_TEXT[c], "content": {"application/problem+json": {"schema": ref("Problem")}}}
        for c in codes
    }


def json_reply(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """A response whose body is JSON of this schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_request(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """A request body of JSON of this schema."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def object_schema(
    properties: dict[str, Any], required: list[str] | None = None, additional: bool = False
) -> dict[str, Any]:
    """An object schema; closed unless ``additional`` (bodies refuse unknown fields, web/bodies.py)."""
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": additional}
    if required:
        out["required"] = required
    return out


def query_parameter(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An optional query parameter (the document adds ``allowEmptyValue``: empty means absent)."""
    out = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        out["description"] = description
    return out


NULLABLE_STR = {"type": ["string", "null"]}
# A job argument's value (a default, a choice): one of ARG_TYPES, of the type the argument declares.
ARG_VALUE = {"type": ["string", "number", "boolean"]}
# A name in a query (?source=, ?job=): what web/bodies.py query_text accepts; empty means absent.
NAME_QUERY = {"type": "string", "maxLength": 256, "pattern": "^[^\\x00-\\x1f]*$"}
SOURCE_QUERY = query_parameter("source", NAME_QUERY)
EVENT = object_schema(
    {
        "id": {"type": "integer", "minimum": 1},
        "run_id": NULLABLE_STR,
        "type": {"type": "string", "enum": EVENT_TYPES},
        "time": {"type": "string"},
        "data": {"type": "object"},
    },
    ["id", "run_id", "type", "time", "data"],
)
# One event of a stream as sent; the data is the Event as JSON.
STREAM_EVENT = object_schema(
    {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": EVENT_TYPES},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": ref("Event")},
        "retry": {"type": "integer", "minimum": 0},
    },
    additional=True,
)
SSE = {
    "description": "Server-Sent Events: `id:` is the event id, `event:` its type, `data:` the event as JSON; "
    "the stream opens with `retry:` and idle streams get `: ping` comments",
    # OpenAPI 3.1 has no itemSchema (3.2 has), so the schema says both readings of a stream: the body is
    # text (what generated clients hand back), and tools that read a 3.1 stream's schema per event
    # (schemathesis) check each event, an object, against StreamEvent.
    "content": {
        "text/event-stream": {
            "schema": {
                "anyOf": [
                    {"type": "string", "description": "the stream as text, as far as it was read"},
                    ref("StreamEvent"),
                ]
            }
        }
    },
}
LAST_EVENT_ID = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"},
        "description": "resume after this event id (empty: from the start)",
    },
    query_parameter(
        "after", {"type": "string", "pattern": "^[0-9]{1,19}$"}, "like Last-Event-ID, for clients that cannot set it"
    ),
    query_parameter(
        "ticket",
        {"type": "string"},
        "A ticket from POST /stream-tickets, for clients that cannot send Authorization (EventSource); "
        "it opens its stream as often as asked until it expires",
    ),
]
CALLBACK_REQUEST = object_schema(
    {"url": {"type": "string", "minLength": 1, "maxLength": 2048, "description": "under callbacks.allowed_urls"}},
    ["url"],
)
RUN_REQUEST = object_schema(
    {
        "job": {"type": "string", "minLength": 1, "maxLength": 256, "description": "name or source:name"},
        "args": {"type": ["object", "null"], "additionalProperties": True},
        "source": {"type": "string", "minLength": 1},
        "profile": {"type": "string", "enum": PROFILES},
    },
    ["job"],
)

SCHEMAS: dict[str, Any] = {
    "Event": EVENT,
    "StreamEvent": STREAM_EVENT,
    "Problem": object_schema(
        {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        ["type", "title", "status", "detail"],
        additional=True,
    ),
    "ArgSpec": object_schema(
        {
            "type": {"type": "string", "enum": ARG_TYPE_NAMES},
            "required": {"type": "boolean"},
            "default": ARG_VALUE,
            "choices": {"type": "array", "items": ARG_VALUE, "minItems": 1},
            "pattern": {"type": "string"},
            "minimum": {"type": "number"},
            "maximum": {"type": "number"},
            "description": {"type": "string"},
            "secret": {"type": "boolean"},
        },
        ["type", "required"],
    ),
    "OutputSpec": object_schema(
        {"type": {"type": "string", "enum": ARG_TYPE_NAMES}, "description": {"type": "string"}},
        ["type"],
    ),
    "Concurrency": object_schema(
        {
            "group": {
                "type": "string",
                "description": "the group: in a job, a template over its args ('deploy-{{ args.env }}'); "
                "in a plan, rendered",
            },
            "limit": {"type": "integer", "minimum": 1, "description": "at most this many runs of the group at once"},
            "when_busy": {"type": "string", "enum": list(WHEN_BUSY)},
        },
        ["group", "limit", "when_busy"],
    ),
    "RunQueue": object_schema(
        {
            "position": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "1: the run the next claim takes; null for a run awaiting approval (in no line yet)",
            },
            "reason": {
                "type": "string",
                "description": "why it waits: 'max_concurrent_runs (N running)', "
                "'concurrency group G (N of L running)', 'waiting to be claimed' or 'awaiting approval'",
            },
        },
        ["position", "reason"],
    ),
    "JobSummary": object_schema(
        {
            "name": {"type": "string"},
            "source": {"type": "string"},
            "description": {"type": "string"},
            "args": {"type": "object", "additionalProperties": ref("ArgSpec")},
            "outputs": {
                "type": "object",
                "additionalProperties": ref("OutputSpec"),
                "description": "outputs the job declares: a run fails if a step does not set each, as its type",
            },
            "concurrency": ref("Concurrency"),  # GET /jobs/NAME only, when the job declares it
            "approval": {
                **object_schema({"required": {"type": "integer", "minimum": 1}}, ["required"]),
                "description": "only for a job that needs approval: the distinct approvers a run waits for",
            },
        },
        ["name", "source", "description", "args"],
        additional=True,
    ),
    "Step": object_schema(
        {"name": {"type": "string"}, "kind": {"type": "string", "enum": ["shell", "container"]}},
        ["name", "kind"],
        additional=True,
    ),
    "Decision": object_schema(
        {
            "check": {"type": "string"},
            "outcome": {"type": "string", "enum": VERDICTS},
            "reason": {"type": "string"},
        },
        ["check", "outcome", "reason"],
    ),
    "Plan": object_schema(
        {
            "job": {"type": "string"},
            "source": {"type": "string"},
            "revision": NULLABLE_STR,
            "description": {"type": "string"},
            "args": {"type": "object"},
            "requires": {"type": "array", "items": {"type": "string"}},
            "timeout": {"type": "number"},
            "steps": {"type": "array", "items": ref("Step")},
            "profile": {"type": "string", "enum": PROFILES},
            "decisions": {"type": "array", "items": ref("Decision")},
            "runnable": {"type": "boolean"},
            "digest": {"type": "string"},
            "concurrency": {
                "anyOf": [ref("Concurrency"), {"type": "null"}],
                "description": "the run's concurrency group, rendered from these args (null: the job has none)",
            },
        },
        ["job", "source", "revision", "args", "steps", "profile", "decisions", "runnable", "digest", "concurrency"],
        additional=True,
    ),
    "Artifact": object_schema(
        {
            "path": {"type": "string", "description": "relative POSIX path in $FLWD_ARTIFACTS, in NFC"},
            "size": {"type": "integer", "minimum": 0},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "links": object_schema({"self": {"type": "string"}}, ["self"]),
        },
        ["path", "size", "sha256", "links"],
    ),
    "Run": object_schema(
        {
            "id": {"type": "string"},
            "job": {"type": "string"},
            "source": {"type": "string"},
            "revision": NULLABLE_STR,
            "args": {"type": "object"},
            "status": {"type": "string", "enum": STATUSES},
            "profile": {"type": "string"},
            "submitted_by": {"type": "string"},
            "created_at": {"type": "string"},
            "started_at": NULLABLE_STR,
            "finished_at": NULLABLE_STR,
            "exit_code": {"type": ["integer", "null"]},
            "reason": NULLABLE_STR,
            "plan_digest": NULLABLE_STR,
            "outputs": {
                "type": "object",
                "additionalProperties": ARG_VALUE,
                "description": "what its steps wrote to $FLWD_OUTPUT, set when the run ends: declared outputs "
                "typed, others strings, secret argument values masked",
            },
            "artifacts": {
                "type": "array",
                "items": object_schema(
                    {"path": {"type": "string"}, "size": {"type": "integer"}, "sha256": {"type": "string"}},
                    ["path", "size", "sha256"],
                ),
                "description": "the files the run left in $FLWD_ARTIFACTS, with their digests (GET /runs/ID and "
                "callbacks only, not the lists)",
            },
            "callback": {
                "anyOf": [ref("RunCallback"), {"type": "null"}],
                "description": "where the run is POSTed when it ends, and how far that got (null: no callback)",
            },
            "queue": {
                "anyOf": [ref("RunQueue"), {"type": "null"}],
                "description": "a waiting run's place in line and why it waits (queued, or awaiting approval); "
                "null for any other run",
            },
            "links": object_schema({"self": {"type": "string"}, "events": {"type": "string"}}, ["self", "events"]),
        },
        [
            "id",
            "job",
            "source",
            "revision",
            "args",
            "status",
            "profile",
            "submitted_by",
            "created_at",
            "started_at",
            "finished_at",
            "exit_code",
            "outputs",
            "queue",
            "links",
        ],
        additional=True,
    ),
    "RunCallback": object_schema(
        {
            "url": {"type": "string", "description": "the callback URL, its query string redacted"},
            "id": {"type": "string", "description": "the delivery's id, sent as X-Flwd-Delivery"},
            "state": {"type": "string", "enum": ["waiting", "pending", "delivered", "failed"]},
            "attempts": {"type": "integer", "minimum": 0},
            "last_status": {"type": ["integer", "null"], "description": "the HTTP status of the last attempt"},
        },
        ["url", "id", "state", "attempts", "last_status"],
    ),
    "SourceFileError": object_schema(
        {
            "path": {
                "type": "string",
                "description": "the job file, relative to the source root (empty for the source itself)",
            },
            "field": {"type": "string"},
            "message": {"type": "string"},
            "line": {"type": "integer", "minimum": 1},
        },
        ["path", "field", "message"],
        additional=True,
    ),
    "Source": object_schema(
        {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": SOURCE_TYPES},
            "origin": {"type": "string", "enum": ["bundled", "config", "api"]},
            "path": {"type": "string"},
            "url": {"type": "string", "description": "passwords are shown as ***"},
            "ref": NULLABLE_STR,
            "revision": {
                **NULLABLE_STR,
                "description": "the commit (git), content digest (local) or manifest digest (oci) jobs come from",
            },
            "synced_at": NULLABLE_STR,
            "last_error": NULLABLE_STR,
            "removable": {"type": "boolean"},
            "jobs": {"type": "array", "items": ref("JobSummary")},
            "errors": {"type": "array", "items": ref("SourceFileError")},
        },
        ["name", "type", "origin", "revision", "synced_at", "last_error", "removable", "jobs", "errors"],
        additional=True,
    ),
    "SourceRequest": object_schema(
        {
            "type": {"type": "string", "enum": SOURCE_TYPES},
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,62}$"},
            "path": {"type": "string", "minLength": 1, "description": "local: an absolute path on the server"},
            "url": {
                "type": "string",
                "minLength": 1,
                "description": "git: a URL with an allowed scheme (git.allowed_schemes)",
            },
            "ref": {
                "type": "string",
                "minLength": 1,
                "description": "git: a branch, tag or commit (default: the remote's HEAD); "
                "oci (required): registry/repo:tag or registry/repo@sha256:…",
            },
        },
        ["type", "name"],
    ),
}
