"""Operations: liveness and the API description (no token), metrics and the export."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request

from .. import __version__
from ..auth.scopes import Scope
from ..errors import StorageError
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..store.event_filter import SYNTAX as EVENT_FILTER_SYNTAX
from ..store.export import ExportFilter
from .openapi import openapi_document
from .operations import PUBLIC, operation
from .render import json_response
from .schemas import json_reply, object_schema, problems, query_parameter

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@operation(
    PUBLIC,
    "Liveness and readiness",
    {
        "200": json_reply(object_schema({"status": {"type": "string"}, "version": {"type": "string"}}, ["status"])),
        **problems(503),
    },
    operation_id="getHealth",
)
def healthz() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    try:
        engine.store.reader().execute("SELECT 1 FROM runs LIMIT 1").fetchall()
    except Exception as exc:
        raise StorageError(f"the database cannot be read: {type(exc).__name__}") from None
    status = "shutting-down" if engine.closing or engine.runner.draining else "ok"
    return json_response({"status": status, "version": __version__}, status=200 if status == "ok" else 503)


@bp.get("/openapi.json")
@operation(PUBLIC, "This document", {"200": json_reply({"type": "object"})}, operation_id="getOpenApiDocument")
def openapi() -> Response:
    return json_response(openapi_document(current_app))


@bp.get("/metrics")
@operation(
    Scope.METRICS_READ,
    "Prometheus metrics (text exposition format 0.0.4), the same from every worker",
    {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    operation_id="getMetrics",
)
def metrics() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    return Response(
        engine.metrics.exposition(),
        mimetype=None,
        content_type=METRICS_CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


@bp.get("/export")
@operation(
    Scope.EXPORT_READ,
    'Runs with their events as NDJSON, oldest first, streamed; the last line is {"record": "end", "runs": N, "events": M}',
    {
        "200": {
            "description": (
                "One JSON record per line (format 4): export, then run and its events with their hash chain, "
                "..., the chain of finished runs (unfiltered), end"
            ),
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **problems(400),
    },
    parameters=[
        query_parameter("since", {"type": "string"}, "runs created at or after (ISO 8601; no offset means UTC)"),
        query_parameter("until", {"type": "string"}, "runs created before (ISO 8601; no offset means UTC)"),
        query_parameter("status", {"type": "string"}, "one status or several, comma-separated"),
        query_parameter("job", {"type": "string"}, "NAME or SOURCE:NAME"),
        query_parameter(
            "source",
            {"type": "string", "pattern": f"^{EVENT_FILTER_SYNTAX['source'].pattern}$"},
            "runs from this source, and the events without a run that name it (source.synced, source.failed)",
        ),
    ],
    operation_id="exportRuns",
)
def export() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    filters = ExportFilter.parse(request.args.to_dict(flat=True))  # 400 before the stream starts
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers = {
        "Cache-Control": "no-store, no-transform",
        "X-Accel-Buffering": "no",
        "Content-Disposition": f'attachment; filename="flwd-export-{stamp}.ndjson"',
    }
    return Response(engine.export(filters), mimetype="application/x-ndjson", headers=headers, direct_passthrough=True)
