"""The OpenAPI 3.1 document of the HTTP API, checked against the URL map by the tests."""

from __future__ import annotations

from typing import Any

from flask import Flask

from .. import __version__
from ..auth.scopes import SCOPES
from .schemas import LAST_EVENT_ID, NAME_QUERY, NULLABLE_STR, RUN_REQUEST, SCHEMAS, SSE, STATUSES, json_reply, object_schema, problems, ref


def _op(summary: str, scope: str | None, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope:
        op["security"] = [{"bearer": [scope]}]
        op["x-required-scope"] = scope
        op["responses"] = {**problems(401, 403), **responses}
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
        "/healthz": {"get": _op("Liveness and readiness", None, {"200": json_reply(object_schema({"status": {"type": "string"}, "version": {"type": "string"}}, ["status"])), **problems(503)})},
        "/openapi.json": {"get": _op("This document", None, {"200": json_reply({"type": "object"})})},
        "/jobs": {
            "get": _op(
                "List jobs of every source",
                "jobs:read",
                {"200": json_reply(object_schema({"jobs": {"type": "array", "items": ref("JobSummary")}}, ["jobs"])), **problems(400, 404)},
                parameters=[source_q],
            )
        },
        "/jobs/{name}": {
            "get": _op(
                "One job with its steps",
                "jobs:read",
                {"200": json_reply(object_schema({"job": ref("JobSummary")}, ["job"])), **problems(400, 404, 409, 422)},
                parameters=job_name + [source_q],
            )
        },
        "/plans": {
            "post": _op(
                "Plan a run without running it",
                "jobs:read",
                {"200": json_reply(object_schema({"plan": ref("Plan")}, ["plan"])), **problems(400, 404, 409, 413, 415, 422)},
                requestBody=body(RUN_REQUEST),
            )
        },
        "/runs": {
            "post": _op(
                "Submit a run",
                "runs:write",
                {"202": json_reply(object_schema({"run": ref("Run")}, ["run"]), "Accepted"), **problems(400, 404, 409, 413, 415, 422, 503)},
                requestBody=body({**RUN_REQUEST, "properties": {**RUN_REQUEST["properties"], "plan": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}}}),
                parameters=[{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}],
            ),
            "get": _op(
                "List runs, newest first",
                "runs:read",
                {"200": json_reply(object_schema({"runs": {"type": "array", "items": ref("Run")}, "next": NULLABLE_STR}, ["runs", "next"])), **problems(400)},
                parameters=[
                    {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": STATUSES}},
                    {"name": "job", "in": "query", "required": False, "schema": NAME_QUERY},
                    source_q,
                    {"name": "limit", "in": "query", "required": False, "allowEmptyValue": False, "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}, "description": "the `next` of the previous page"},
                ],
            ),
        },
        "/runs/{run_id}": {"get": _op("One run", "runs:read", {"200": json_reply(object_schema({"run": ref("Run")}, ["run"])), **problems(404)}, parameters=run_id)},
        "/runs/{run_id}/cancel": {
            "post": _op("Cancel a queued or running run", "runs:write", {"202": json_reply(object_schema({"run": ref("Run")}, ["run"]), "Accepted"), **problems(404, 409, 503)}, parameters=run_id)
        },
        "/runs/{run_id}/events": {
            "get": _op(
                "Stream a run's events (ends after run.finished)",
                "runs:read",
                {"200": SSE, "204": {"description": "The run finished and every event was seen"}, **problems(400, 404, 503)},
                parameters=run_id + LAST_EVENT_ID,
            )
        },
        "/stream-tickets": {
            "post": _op(
                "A single-use ticket to open one event stream without an Authorization header",
                "runs:read",
                {
                    "201": json_reply(object_schema({"ticket": {"type": "string"}, "expires_in": {"type": "number"}, "run_id": NULLABLE_STR}, ["ticket", "expires_in", "run_id"]), "Created"),
                    **problems(400, 404, 413, 415, 422),
                },
                requestBody={"required": False, "content": {"application/json": {"schema": object_schema({"run": {"type": ["string", "null"], "minLength": 1}})}}},
            )
        },
        "/events": {"get": _op("Stream every event", "runs:read", {"200": SSE, **problems(400, 503)}, parameters=LAST_EVENT_ID)},
        "/sources": {
            "get": _op("List sources with their revisions, jobs and job-file errors", "sources:read", {"200": json_reply(object_schema({"sources": {"type": "array", "items": ref("Source")}}, ["sources"]))}),
            "post": _op(
                "Register a source (a git source is fetched first)",
                "sources:write",
                {"201": json_reply(object_schema({"source": ref("Source")}, ["source"]), "Created"), **problems(400, 409, 413, 415, 422, 503)},
                requestBody=body(ref("SourceRequest")),
            ),
        },
        "/sources/{name}": {
            "get": _op("One source, each job file's error with its path and line", "sources:read", {"200": json_reply(object_schema({"source": ref("Source")}, ["source"])), **problems(404)}, parameters=source_name),
            "delete": _op(
                "Remove a source registered over the API (bundled and config sources: 409)",
                "sources:write",
                {"204": {"description": "Removed"}, **problems(404, 409, 503)},
                parameters=source_name,
            ),
        },
        "/sources/{name}/sync": {
            "post": _op(
                "Fetch (git) or rescan (local) a source now",
                "sources:write",
                {
                    "200": json_reply(
                        object_schema({"source": ref("Source"), "previous_revision": NULLABLE_STR, "changed": {"type": "boolean"}}, ["source", "previous_revision", "changed"])
                    ),
                    **problems(404, 502, 503),
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
                {"200": {"description": "One JSON record per line: export, then run and its events, ..., end", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, **problems(400)},
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
