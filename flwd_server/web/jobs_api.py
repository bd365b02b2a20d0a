"""GET /jobs and GET /jobs/NAME."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from .access import requires
from .bodies import query_text
from .render import json_response

bp = Blueprint("jobs", __name__)


@bp.get("/jobs")
@requires("jobs:read")
def list_jobs() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    return Response(engine.jobs_document(query_text("source")) + "\n", mimetype="application/json")


@bp.get("/jobs/<path:name>")
@requires("jobs:read")
def get_job(name: str) -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    return json_response({"job": engine.job(name, query_text("source")).to_dict()})
