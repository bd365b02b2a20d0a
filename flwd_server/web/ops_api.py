"""Operations: liveness and the API description (no token), metrics and the export."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request

from .. import __version__
from ..errors import StorageError
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..store.export import ExportFilter
from .access import public, requires
from .openapi import openapi_document
from .render import json_response

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@public
def healthz() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    try:
        engine.store.reader().execute("SELECT 1 FROM runs LIMIT 1").fetchall()
    except Exception as exc:
        raise StorageError(f"the database cannot be read: {type(exc).__name__}") from None
    status = "shutting-down" if engine.closing or engine.runner.draining else "ok"
    return json_response({"status": status, "version": __version__}, status=200 if status == "ok" else 503)


@bp.get("/openapi.json")
@public
def openapi() -> Response:
    return json_response(openapi_document(current_app))


@bp.get("/metrics")
@requires("metrics:read")
def metrics() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    return Response(engine.metrics.exposition(), mimetype=None, content_type=METRICS_CONTENT_TYPE, headers={"Cache-Control": "no-store"})


@bp.get("/export")
@requires("export:read")
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
