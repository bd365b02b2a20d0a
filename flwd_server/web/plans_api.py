"""POST /plans: a dry run showing what would execute and every policy decision."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..auth.scopes import Scope
from .access import principal
from .bodies import plan_request
from .operations import operation
from .render import json_response
from .schemas import RUN_REQUEST, json_reply, json_request, object_schema, problems, ref

bp = Blueprint("plans", __name__)


@bp.post("/plans")
@operation(
    Scope.JOBS_READ,
    "Plan a run without running it",
    {"200": json_reply(object_schema({"plan": ref("Plan")}, ["plan"])), **problems(400, 404, 409, 413, 415, 422)},
    request_body=json_request(RUN_REQUEST),
    operation_id="createPlan",
)
def create_plan() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    plan = engine.plan(plan_request(with_plan=False), principal())
    return json_response({"plan": plan.to_dict()})
