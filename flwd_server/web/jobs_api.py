"""GET /jobs and GET /jobs/NAME."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..auth.scopes import Scope
from .bodies import query_text
from .operations import operation
from .render import json_response
from .schemas import SOURCE_QUERY, json_reply, object_schema, problems, ref

bp = Blueprint("jobs", __name__)


@bp.get("/jobs")
@operation(
    Scope.JOBS_READ,
    "List jobs of every source",
    {
        "200": json_reply(object_schema({"jobs": {"type": "array", "items": ref("JobSummary")}}, ["jobs"])),
        **problems(400, 404),
    },
    parameters=[SOURCE_QUERY],
    operation_id="listJobs",
)
def list_jobs() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    return Response(engine.jobs_document(query_text("source")) + "\n", mimetype="application/json")


@bp.get("/jobs/<path:name>")
@operation(
    Scope.JOBS_READ,
    "One job with its steps",
    {"200": json_reply(object_schema({"job": ref("JobSummary")}, ["job"])), **problems(400, 404, 409, 422)},
    parameters=[SOURCE_QUERY],
    operation_id="getJob",
)
def get_job(name: str) -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    return json_response({"job": engine.job(name, query_text("source")).to_dict()})
