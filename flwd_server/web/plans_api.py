"""POST /plans: a dry run showing what would execute and every policy decision."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from .access import principal, requires
from .bodies import plan_request
from .render import json_response

bp = Blueprint("plans", __name__)


@bp.post("/plans")
@requires("jobs:read")
def create_plan() -> Response:
    engine = current_app.config["FLWD_ENGINE"]
    plan = engine.plan(plan_request(with_plan=False), principal())
    return json_response({"plan": plan.to_dict()})
