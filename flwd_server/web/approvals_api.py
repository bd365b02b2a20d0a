"""``POST /runs/ID/approve`` and ``POST /runs/ID/deny``: approvals bound to the plan (runs/approvals.py)."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app

from ..auth.scopes import Scope
from ..errors import Unprocessable
from .access import principal
from .bodies import json_body
from .operations import operation
from .render import base_url, json_response
from .schemas import json_reply, json_request, object_schema, problems, ref

bp = Blueprint("approvals", __name__)
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_REASON = 1000
RUN_REPLY = object_schema({"run": ref("Run")}, ["run"])


def _field(body: dict, name: str, valid: bool, message: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not valid:
        raise Unprocessable(f"{name}: {message}", [{"field": name, "message": message}])
    return value


@bp.post("/runs/<run_id>/approve")
@operation(
    Scope.RUNS_APPROVE,
    "Approve a run awaiting approval: the digest must be its plan digest; the last approval releases it",
    {"200": json_reply(RUN_REPLY), **problems(400, 403, 404, 409, 413, 415, 422)},
    request_body=json_request(
        object_schema(
            {"digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$", "description": "the run's plan_digest"}},
            ["digest"],
        )
    ),
    operation_id="approveRun",
)
def approve_run(run_id: str) -> Response:
    body = json_body(("digest",))
    digest = body.get("digest")
    _field(body, "digest", isinstance(digest, str) and DIGEST_RE.fullmatch(digest) is not None, "expected sha256:HEX")
    run = current_app.config["FLWD_ENGINE"].approve(run_id, principal(), digest)
    return json_response({"run": run.to_dict(base_url())})


@bp.post("/runs/<run_id>/deny")
@operation(
    Scope.RUNS_APPROVE,
    "Deny a run awaiting approval: it ends rejected with the reason given",
    {"200": json_reply(RUN_REPLY), **problems(400, 403, 404, 409, 413, 415, 422)},
    request_body=json_request(
        object_schema({"reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON}}, ["reason"])
    ),
    operation_id="denyRun",
)
def deny_run(run_id: str) -> Response:
    body = json_body(("reason",))
    reason = body.get("reason")
    valid = isinstance(reason, str) and 0 < len(reason.strip()) and len(reason) <= MAX_REASON
    _field(body, "reason", valid, f"expected a reason of 1 to {MAX_REASON} characters")
    run = current_app.config["FLWD_ENGINE"].deny(run_id, principal(), reason.strip())
    return json_response({"run": run.to_dict(base_url())})
