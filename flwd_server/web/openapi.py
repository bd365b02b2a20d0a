"""The OpenAPI 3.1 document of the HTTP API, checked against the URL map by the tests."""

from __future__ import annotations

from typing import Any

from flask import Flask

from .. import __version__
from ..auth.bearer import SCOPES
from ..models import EventType, RunStatus

STATUSES = [s.value for s in RunStatus]
PROFILES = ["secure", "permissive", "disabled"]
SOURCE_TYPES = ["local", "git", "oci"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        401: "Missing or invalid bearer token",
        403: "Token lacks the scope, or policy forbids it",
        404: "Not found",
        409: "Conflict",
        413: "Body too large",
        415: "Body is not JSON",
        422: "Invalid fields",
        502: "The source could not be fetched; the last good revision keeps serving",
        503: "Unavailable; retry later",
    }
    return {str(c): {"description": text[c], "content": {"application/problem+json": {"schema": _ref("Problem")}}} for c in codes}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(properties: dict[str, Any], required: list[str] | None = None, additional: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": additional}
    if required:
        out["required"] = required
    return out


NULLABLE_STR = {"type": ["string", "null"]}
# A name in a query (?source=, ?job=): what web/bodies.py query_text accepts; empty means absent.
NAME_QUERY = {"type": "string", "maxLength": 256, "pattern": "^[^\\x00-\\x1f]*$"}
EVENT_TYPES = [t.value for t in EventType]
EVENT = _obj(
    {
        "id": {"type": "integer", "minimum": 1},
        "run_id": NULLABLE_STR,
        "type": {"type": "string", "enum": EVENT_TYPES},
        "time": {"type": "string"},
        "data": {"type": "object"},
    },
    ["id", "run_id", "type", "time", "data"],
)
SSE = {
    "description": "Server-Sent Events: `id:` is the event id, `event:` its type, `data:` the event as JSON; "
    "the stream opens with `retry:` and idle streams get `: ping` comments",
    # OpenAPI 3.1 has no itemSchema: the schema of an event stream describes one event.
    "content": {
        "text/event-stream": {
            "schema": _obj(
                {
                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                    "event": {"type": "string", "enum": EVENT_TYPES},
                    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"$ref": "#/components/schemas/Event"}},
                    "retry": {"type": "integer", "minimum": 0},
                },
                additional=True,
            )
        }
    },
}
LAST_EVENT_ID = [
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"}, "description": "resume after this event id (empty: from the start)"},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}, "description": "like Last-Event-ID, for clients that cannot set it"},
    {
        "name": "ticket",
        "in": "query",
        "required": False,
        "description": "A single-use ticket from POST /stream-tickets, for clients that cannot send Authorization (EventSource)",
        "schema": {"type": "string"},
    },
]
RUN_REQUEST = _obj(
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
    "Problem": _obj(
        {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        ["type", "title", "status", "detail"],
        additional=True,
    ),
    "ArgSpec": _obj(
        {
            "type": {"type": "string", "enum": ["string", "integer", "number", "boolean"]},
            "required": {"type": "boolean"},
            "default": {},
            "choices": {"type": "array"},
            "pattern": {"type": "string"},
            "minimum": {"type": "number"},
            "maximum": {"type": "number"},
            "description": {"type": "string"},
            "secret": {"type": "boolean"},
        },
        ["type", "required"],
    ),
    "JobSummary": _obj(
        {
            "name": {"type": "string"},
            "source": {"type": "string"},
            "description": {"type": "string"},
            "args": {"type": "object", "additionalProperties": _ref("ArgSpec")},
        },
        ["name", "source", "description", "args"],
        additional=True,
    ),
    "Step": _obj({"name": {"type": "string"}, "kind": {"type": "string", "enum": ["shell", "container"]}}, ["name", "kind"], additional=True),
    "Decision": _obj(
        {"check": {"type": "string"}, "outcome": {"type": "string", "enum": ["allow", "warn", "deny"]}, "reason": {"type": "string"}},
        ["check", "outcome", "reason"],
    ),
    "Plan": _obj(
        {
            "job": {"type": "string"},
            "source": {"type": "string"},
            "revision": NULLABLE_STR,
            "description": {"type": "string"},
            "args": {"type": "object"},
            "requires": {"type": "array", "items": {"type": "string"}},
            "timeout": {"type": "number"},
            "steps": {"type": "array", "items": _ref("Step")},
            "profile": {"type": "string", "enum": PROFILES},
            "decisions": {"type": "array", "items": _ref("Decision")},
            "runnable": {"type": "boolean"},
            "digest": {"type": "string"},
        },
        ["job", "source", "revision", "args", "steps", "profile", "decisions", "runnable", "digest"],
        additional=True,
    ),
    "Run": _obj(
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
            "links": _obj({"self": {"type": "string"}, "events": {"type": "string"}}, ["self", "events"]),
        },
        ["id", "job", "source", "revision", "args", "status", "profile", "submitted_by", "created_at", "started_at", "finished_at", "exit_code", "links"],
        additional=True,
    ),
    "SourceFileError": _obj(
        {
            "path": {"type": "string", "description": "the job file, relative to the source root (empty for the source itself)"},
            "field": {"type": "string"},
            "message": {"type": "string"},
            "line": {"type": "integer", "minimum": 1},
        },
        ["path", "field", "message"],
        additional=True,
    ),
    "Source": _obj(
        {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": SOURCE_TYPES},
            "origin": {"type": "string", "enum": ["bundled", "config", "api"]},
            "path": {"type": "string"},
            "url": {"type": "string", "description": "passwords are shown as ***"},
            "ref": NULLABLE_STR,
            "revision": {**NULLABLE_STR, "description": "the commit (git) or content digest (local) jobs come from"},
            "synced_at": NULLABLE_STR,
            "last_error": NULLABLE_STR,
            "removable": {"type": "boolean"},
            "jobs": {"type": "array", "items": _ref("JobSummary")},
            "errors": {"type": "array", "items": _ref("SourceFileError")},
        },
        ["name", "type", "origin", "revision", "synced_at", "last_error", "removable", "jobs", "errors"],
        additional=True,
    ),
    "SourceRequest": _obj(
        {
            "type": {"type": "string", "enum": SOURCE_TYPES},
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,62}$"},
            "path": {"type": "string", "minLength": 1, "description": "local: an absolute path on the server"},
            "url": {"type": "string", "minLength": 1, "description": "git: a URL with an allowed scheme (git.allowed_schemes)"},
            "ref": {"type": "string", "minLength": 1, "description": "git: a branch, tag or commit (default: the remote's HEAD)"},
        },
        ["type", "name"],
    ),
}


def _op(summary: str, scope: str | None, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope:
        op["security"] = [{"bearer": [scope]}]
        op["x-required-scope"] = scope
        op["responses"] = {**_problem(401, 403), **responses}
    else:
        op["security"] = []
    for parameter in extra.get("parameters", []):
        if parameter["in"] == "query":
            parameter.setdefault("allowEmptyValue", True)  # empty means absent, but for integers (limit)
    op.update(extra)
    return op


def _paths() -> dict[str, Any]:
    run_id = [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}]
    job_name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}]
    source_q = {"name": "source", "in": "query", "required": False, "schema": NAME_QUERY}
    source_name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}]
    body = lambda schema: {"required": True, "content": {"application/json": {"schema": schema}}}  # noqa: E731
    return {
        "/healthz": {"get": _op("Liveness and readiness", None, {"200": _json(_obj({"status": {"type": "string"}, "version": {"type": "string"}}, ["status"])), **_problem(503)})},
        "/openapi.json": {"get": _op("This document", None, {"200": _json({"type": "object"})})},
        "/jobs": {
            "get": _op(
                "List jobs of every source",
                "jobs:read",
                {"200": _json(_obj({"jobs": {"type": "array", "items": _ref("JobSummary")}}, ["jobs"])), **_problem(400, 404)},
                parameters=[source_q],
            )
        },
        "/jobs/{name}": {
            "get": _op(
                "One job with its steps",
                "jobs:read",
                {"200": _json(_obj({"job": _ref("JobSummary")}, ["job"])), **_problem(400, 404, 409, 422)},
                parameters=job_name + [source_q],
            )
        },
        "/plans": {
            "post": _op(
                "Plan a run without running it",
                "jobs:read",
                {"200": _json(_obj({"plan": _ref("Plan")}, ["plan"])), **_problem(400, 404, 409, 413, 415, 422)},
                requestBody=body(RUN_REQUEST),
            )
        },
        "/runs": {
            "post": _op(
                "Submit a run",
                "runs:write",
                {"202": _json(_obj({"run": _ref("Run")}, ["run"]), "Accepted"), **_problem(400, 404, 409, 413, 415, 422, 503)},
                requestBody=body({**RUN_REQUEST, "properties": {**RUN_REQUEST["properties"], "plan": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}}}),
                parameters=[{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}],
            ),
            "get": _op(
                "List runs, newest first",
                "runs:read",
                {"200": _json(_obj({"runs": {"type": "array", "items": _ref("Run")}, "next": NULLABLE_STR}, ["runs", "next"])), **_problem(400)},
                parameters=[
                    {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": STATUSES}},
                    {"name": "job", "in": "query", "required": False, "schema": NAME_QUERY},
                    source_q,
                    {"name": "limit", "in": "query", "required": False, "allowEmptyValue": False, "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}, "description": "the `next` of the previous page"},
                ],
            ),
        },
        "/runs/{run_id}": {"get": _op("One run", "runs:read", {"200": _json(_obj({"run": _ref("Run")}, ["run"])), **_problem(404)}, parameters=run_id)},
        "/runs/{run_id}/cancel": {
            "post": _op("Cancel a queued or running run", "runs:write", {"202": _json(_obj({"run": _ref("Run")}, ["run"]), "Accepted"), **_problem(404, 409, 503)}, parameters=run_id)
        },
        "/runs/{run_id}/events": {
            "get": _op(
                "Stream a run's events (ends after run.finished)",
                "runs:read",
                {"200": SSE, "204": {"description": "The run finished and every event was seen"}, **_problem(400, 404, 503)},
                parameters=run_id + LAST_EVENT_ID,
            )
        },
        "/stream-tickets": {
            "post": _op(
                "A single-use ticket to open one event stream without an Authorization header",
                "runs:read",
                {
                    "201": _json(_obj({"ticket": {"type": "string"}, "expires_in": {"type": "number"}, "run_id": NULLABLE_STR}, ["ticket", "expires_in", "run_id"]), "Created"),
                    **_problem(400, 404, 413, 415, 422),
                },
                requestBody={"required": False, "content": {"application/json": {"schema": _obj({"run": {"type": ["string", "null"], "minLength": 1}})}}},
            )
        },
        "/events": {"get": _op("Stream every event", "runs:read", {"200": SSE, **_problem(400, 503)}, parameters=LAST_EVENT_ID)},
        "/sources": {
            "get": _op("List sources with their revisions, jobs and job-file errors", "sources:read", {"200": _json(_obj({"sources": {"type": "array", "items": _ref("Source")}}, ["sources"]))}),
            "post": _op(
                "Register a source (a git source is fetched first)",
                "sources:write",
                {"201": _json(_obj({"source": _ref("Source")}, ["source"]), "Created"), **_problem(400, 409, 413, 415, 422, 503)},
                requestBody=body(_ref("SourceRequest")),
            ),
        },
        "/sources/{name}": {
            "get": _op("One source, each job file's error with its path and line", "sources:read", {"200": _json(_obj({"source": _ref("Source")}, ["source"])), **_problem(404)}, parameters=source_name),
            "delete": _op(
                "Remove a source registered over the API (bundled and config sources: 409)",
                "sources:write",
                {"204": {"description": "Removed"}, **_problem(404, 409, 503)},
                parameters=source_name,
            ),
        },
        "/sources/{name}/sync": {
            "post": _op(
                "Fetch (git) or rescan (local) a source now",
                "sources:write",
                {
                    "200": _json(
                        _obj({"source": _ref("Source"), "previous_revision": NULLABLE_STR, "changed": {"type": "boolean"}}, ["source", "previous_revision", "changed"])
                    ),
                    **_problem(404, 502, 503),
                },
                parameters=source_name,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text exposition format 0.0.4), the same from every worker",
                "metrics:read",
                {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            )
        },
        "/export": {
            "get": _op(
                "Runs with their events as NDJSON, oldest first, streamed; the last line is {\"record\": \"end\", \"runs\": N, \"events\": M}",
                "export:read",
                {"200": {"description": "One JSON record per line: export, then run and its events, ..., end", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, **_problem(400)},
                parameters=[
                    {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}, "description": "runs created at or after (ISO 8601; no offset means UTC)"},
                    {"name": "until", "in": "query", "required": False, "schema": {"type": "string"}, "description": "runs created before (ISO 8601; no offset means UTC)"},
                    {"name": "status", "in": "query", "required": False, "schema": {"type": "string"}, "description": "one status or several, comma-separated"},
                    {"name": "job", "in": "query", "required": False, "schema": {"type": "string"}, "description": "NAME or SOURCE:NAME"},
                ],
            )
        },
    }


def openapi_document(app: Flask | None = None) -> dict[str, Any]:
    paths = _paths()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flwd",
            "version": __version__,
            "description": "Run named, parameterised jobs over HTTP; follow them with Server-Sent Events.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Scopes: " + ", ".join(SCOPES),
                }
            },
        },
    }
